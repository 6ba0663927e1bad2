"""TLS on both sides of the proxy (issue 4), end to end: the real proxy process, a real Dovecot, real
clients (imaplib, poplib, `openssl s_client`, `curl`) and a trustme test CA.

Two module-scoped proxies do most of the work, so the module starts few processes:

- `front`: client-side TLS in front of the session Dovecot (plain upstream). One listener per case:
  implicit TLS with two SNI-selected certificates, STARTTLS/STLS, STARTTLS with plaintext auth
  refused, `tls: none` with plaintext auth refused, and `require_tls`.
- `back`: plain client listeners in front of a TLS-enabled Dovecot; the user's domain routes to an
  upstream configured for one upstream-TLS case (implicit, STARTTLS, wrong name, unknown CA,
  verify off).

The STARTTLS injection and PREAUTH upstream cases use a scripted fake upstream (fake_upstream.py);
certificate reload gets its own proxy because it rewrites the certificate files.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest
import trustme

from support import polling
from support.dovecot import start_dovecot
from support.proxyproc import ProxyProcess, relay_config, traceback_report

from . import fake_upstream

HOST = "127.0.0.1"
TIMEOUT = 15
MAIN_NAMES = ("localhost", "127.0.0.1", "mail.example.com")
OTHER_NAMES = ("other.example.com",)
MAIN_SAN = (("DNS", "localhost"), ("IP Address", "127.0.0.1"), ("DNS", "mail.example.com"))
OTHER_SAN = (("DNS", "other.example.com"),)
PLAINTEXT_NO = b"NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections."
POP3_PLAINTEXT_ERR = (b"-ERR [AUTH] Plaintext authentication disallowed on non-secure "
                      b"connections.")
IMAP_UNAVAILABLE = b"NO [UNAVAILABLE] Server unavailable, try again later."
POP3_UNAVAILABLE = b"-ERR [SYS/TEMP] Server unavailable, try again later."


def message(subject: str) -> bytes:
    return (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subject.encode() +
            b"\r\nMessage-ID: <" + os.urandom(6).hex().encode() + b"@example.com>\r\n\r\nHello.\r\n")


# --------------------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_pair(cert: trustme.LeafCert, directory, stem: str) -> tuple[str, str]:
    """Write the chain and key as PEM files readable by Dovecot's processes; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert_path.chmod(0o644)
    key_path.chmod(0o644)
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def tls_files(ca, dovecot_root):
    """{"ca": CA pem, "main": (cert, key), "other": (cert, key)} under a directory Dovecot can read."""
    directory = dovecot_root / f"tls-{os.getpid()}-{time.monotonic_ns()}"
    ca_path = directory / "ca.pem"
    directory.mkdir(mode=0o755)
    ca.cert_pem.write_to_path(str(ca_path))
    ca_path.chmod(0o644)
    return {"ca": str(ca_path),
            "main": write_pair(ca.issue_cert(*MAIN_NAMES), directory, "main"),
            "other": write_pair(ca.issue_cert(*OTHER_NAMES), directory, "other")}


def client_context(ca, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def start_proxy(config, tmp_path_factory, name):
    return ProxyProcess(config, tmp_path_factory.mktemp(name))


def stop_proxy(proxy):
    proxy.stop()
    report = traceback_report([proxy])
    if report:
        pytest.fail(report, pytrace=False)


def wait_log(proxy, pattern: str, timeout: float = polling.TIMEOUT, since: int = 0) -> str:
    """The first proxy log line from offset `since` on matching the regex `pattern`, waiting
    for it to appear."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        for line in proxy.logs()[since:].splitlines():
            if regex.search(line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line matches {pattern!r}:\n{proxy.logs()[-3000:]}")
        time.sleep(0.05)


def metric(proxy, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}{{{wanted}}}")


# --------------------------------------------------------------------------- raw line clients


class Raw:
    """A plain socket with a line reader, for exact replies."""

    def __init__(self, port: int):
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.port = self.sock.getsockname()[1]

    def line(self) -> bytes:
        return self.file.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def rest(self) -> bytes:
        """Everything until the proxy closes the connection."""
        return self.file.read()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def log_mark(proxy) -> int:
    """Where the proxy's log ends now: take it before connecting, for `session_end`."""
    return len(proxy.logs())


def session_end(proxy, listener: str, port: int, since: int) -> str:
    """The session_end log line of the connection to `listener` from local port `port`, opened
    after the log offset `since` (a module-scoped proxy has seen earlier connections from the
    same port; one to another listener may end meanwhile)."""
    return wait_log(proxy, rf"event=session_end listener={listener} client=127\.0\.0\.1:{port} ",
                    since=since)


# --------------------------------------------------------------------------- client-side TLS


@pytest.fixture(scope="module", params=["epoll", "tasks"])
def front(request, dovecot, tls_files, tmp_path_factory):
    """Once per relay path: TLS sessions run in the epoll engine or on pump tasks."""
    main, other = tls_files["main"], tls_files["other"]
    certs = [{"cert": main[0], "key": main[1], "names": ["mail.example.com", "localhost"]},
             {"cert": other[0], "key": other[1], "names": ["other.example.com"]}]
    config = relay_config(dovecot)
    config["relay"] = {"engine": request.param}

    def listener(name, protocol, tls, **extra):
        entry = {"name": name, "protocol": protocol, "mode": "relay", "address": f"{HOST}:0",
                 "tls": tls, **extra}
        if tls != "none":
            entry["certificates"] = certs
        return entry

    config["listeners"] = [
        listener("imaps", "imap", "implicit"),
        listener("pop3s", "pop3", "implicit"),
        listener("imap_starttls", "imap", "starttls"),
        listener("pop3_starttls", "pop3", "starttls"),
        listener("imap_strict", "imap", "starttls", allow_plaintext_auth=False),
        listener("pop3_strict", "pop3", "starttls", allow_plaintext_auth=False),
        listener("imap_plain_strict", "imap", "none", allow_plaintext_auth=False),
        listener("pop3_plain_strict", "pop3", "none", allow_plaintext_auth=False),
        listener("imap_required", "imap", "starttls", require_tls=True),
        listener("pop3_required", "pop3", "starttls", require_tls=True),
    ]
    proxy = start_proxy(config, tmp_path_factory, "tls-front")
    yield proxy
    stop_proxy(proxy)


def test_implicit_tls_imap(front, ca, dovecot, user):
    name, password = user
    dovecot.deliver(name, message("over imaps"))
    since = log_mark(front)
    imap = imaplib.IMAP4_SSL(HOST, front.port("imaps"), ssl_context=client_context(ca),
                             timeout=TIMEOUT)
    assert imap.welcome.startswith(b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ AUTH=PLAIN")
    assert b"STARTTLS" not in imap.welcome and b"LOGINDISABLED" not in imap.welcome
    assert imap.sock.getpeercert()["subjectAltName"] == MAIN_SAN
    port = imap.sock.getsockname()[1]
    assert imap.login(name, password)[0] == "OK"
    assert imap.select("INBOX") == ("OK", [b"1"])
    typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and data[0][1] == b"Subject: over imaps\r\n\r\n"
    assert imap.logout()[0] == "BYE"
    assert "tls=True" in session_end(front, "imaps", port, since)


def test_implicit_tls_pop3(front, ca, dovecot, user):
    name, password = user
    dovecot.deliver(name, message("over pop3s"))
    pop = poplib.POP3_SSL(HOST, front.port("pop3s"), context=client_context(ca), timeout=TIMEOUT)
    assert pop.getwelcome() == b"+OK mailproxy ready."
    assert pop.sock.getpeercert()["subjectAltName"] == MAIN_SAN
    assert pop.user(name) == b"+OK"
    assert pop.pass_(password) == b"+OK Logged in."
    assert pop.stat()[0] == 1
    assert b"Subject: over pop3s" in pop.retr(1)[1]
    assert pop.quit().startswith(b"+OK")


def test_imaplib_starttls(front, ca, user):
    name, password = user
    imap = imaplib.IMAP4(HOST, front.port("imap_strict"), timeout=TIMEOUT)
    caps = imap.capability()[1][0].split()
    assert b"STARTTLS" in caps and b"LOGINDISABLED" in caps and b"AUTH=PLAIN" not in caps
    assert imap.starttls(ssl_context=client_context(ca))[0] == "OK"
    assert imap.sock.getpeercert()["subjectAltName"] == MAIN_SAN
    caps = imap.capability()[1][0].split()  # re-announced after TLS
    assert caps == [b"IMAP4rev1", b"SASL-IR", b"ID", b"LITERAL+", b"AUTH=PLAIN", b"AUTH=LOGIN"]
    assert imap.login(name, password)[0] == "OK"
    assert imap.select("INBOX")[0] == "OK"
    assert imap.logout()[0] == "BYE"


def test_poplib_stls(front, ca, dovecot, user):
    name, password = user
    dovecot.deliver(name, message("over stls"))
    pop = poplib.POP3(HOST, front.port("pop3_strict"), timeout=TIMEOUT)
    before = pop.capa()
    assert "STLS" in before and "USER" not in before and "SASL" not in before
    assert pop.stls(context=client_context(ca)) == b"+OK Begin TLS negotiation now."
    after = pop.capa()
    assert "STLS" not in after and "USER" in after and after["SASL"] == ["PLAIN", "LOGIN"]
    assert pop.user(name) == b"+OK"
    assert pop.pass_(password) == b"+OK Logged in."
    assert pop.list()[1] == [b"1 %d" % len(message("over stls"))]
    assert pop.quit().startswith(b"+OK")


def s_client(port: int, protocol: str, tls_files, commands: bytes) -> str:
    result = subprocess.run(
        ["openssl", "s_client", "-starttls", protocol, "-connect", f"{HOST}:{port}",
         "-CAfile", tls_files["ca"], "-verify_return_error", "-verify_ip", HOST, "-ign_eof"],
        input=commands, capture_output=True, timeout=TIMEOUT, check=False)
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, out + result.stderr.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out
    return out


def test_openssl_s_client_starttls_imap(front, tls_files):
    out = s_client(front.port("imap_strict"), "imap", tls_files, b"a CAPABILITY\r\nb LOGOUT\r\n")
    caps = re.findall(r"^\* CAPABILITY (.*?)\r?$", out, re.MULTILINE)
    assert caps == ["IMAP4rev1 SASL-IR ID LITERAL+ AUTH=PLAIN AUTH=LOGIN"], out
    assert "a OK Capability completed." in out and "b OK Logout completed." in out


def test_openssl_s_client_stls_pop3(front, tls_files):
    out = s_client(front.port("pop3_strict"), "pop3", tls_files, b"CAPA\r\nQUIT\r\n")
    capa = out.split("+OK Capability list follows", 1)[1].split("\n.", 1)[0]
    lines = [line.strip() for line in capa.strip().splitlines()]
    assert lines == ["TOP", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE", "USER",
                     "SASL PLAIN LOGIN", "IMPLEMENTATION mailproxy"], out
    assert "+OK Logging out." in out


def curl(url: str, user, tls_files) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", "--ssl-reqd", "--max-time", "15",
                           "--cacert", tls_files["ca"], "-u", f"{user[0]}:{user[1]}", url],
                          capture_output=True, timeout=TIMEOUT + 5, check=False)


def test_curl_imap_starttls(front, dovecot, user, tls_files):
    dovecot.maildir(user[0], "INBOX/Sub")  # a child of INBOX for curl's LIST "INBOX" *
    result = curl(f"imap://{HOST}:{front.port('imap_strict')}/INBOX", user, tls_files)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split(b"\r\n")) == [b"", b'* LIST (\\HasChildren) "/" INBOX',
                                                  b'* LIST (\\HasNoChildren) "/" INBOX/Sub']


def test_curl_pop3_stls(front, dovecot, user, tls_files):
    dovecot.deliver(user[0], message("curl"))
    result = curl(f"pop3://{HOST}:{front.port('pop3_strict')}/", user, tls_files)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"1 %d\r\n" % len(message("curl"))


def tls_connect(port: int, ca, server_hostname: str | None, alpn=None) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, port), timeout=TIMEOUT)
    return client_context(ca, alpn).wrap_socket(raw, server_hostname=server_hostname or HOST)


@pytest.mark.parametrize("server_name, san", [("mail.example.com", MAIN_SAN),
                                               ("other.example.com", OTHER_SAN),
                                               ("localhost", MAIN_SAN),
                                               (None, MAIN_SAN)])
def test_sni_selects_certificate(front, ca, server_name, san):
    with tls_connect(front.port("imaps"), ca, server_name) as tls:
        assert tls.getpeercert()["subjectAltName"] == san
        assert tls.recv(200).startswith(b"* OK [CAPABILITY IMAP4rev1")


def test_sni_on_starttls_pop3(front, ca):
    raw = Raw(front.port("pop3_starttls"))
    assert raw.line() == b"+OK mailproxy ready.\r\n"
    raw.send(b"STLS\r\n")
    assert raw.line() == b"+OK Begin TLS negotiation now.\r\n"
    with client_context(ca).wrap_socket(raw.sock, server_hostname="other.example.com") as tls:
        assert tls.getpeercert()["subjectAltName"] == OTHER_SAN
        tls.sendall(b"NOOP\r\n")
        assert tls.recv(100) == b"+OK\r\n"


def test_alpn_imap_accepted(front, ca):
    with tls_connect(front.port("imaps"), ca, "mail.example.com", ["imap"]) as tls:
        assert tls.selected_alpn_protocol() == "imap"
        assert tls.recv(200).startswith(b"* OK [CAPABILITY IMAP4rev1")


@pytest.mark.parametrize("listener, alpn", [("imaps", ["http/1.1"]), ("pop3s", ["http/1.1"]),
                                            ("pop3s", ["imap"])])
def test_wrong_alpn_refused(front, ca, listener, alpn):
    """ALPACA: a client that offers only another protocol never gets a greeting."""
    since = log_mark(front)
    raw = socket.create_connection((HOST, front.port(listener)), timeout=TIMEOUT)
    port = raw.getsockname()[1]
    try:
        tls = client_context(ca, alpn).wrap_socket(raw, server_hostname="mail.example.com")
    except (ssl.SSLError, ConnectionError):
        pass  # the server may abort before the client's handshake completes
    else:
        assert tls.selected_alpn_protocol() is None
        try:
            data = tls.recv(200)
        except (ssl.SSLError, ConnectionError):
            data = b""
        assert data == b""
        tls.close()
    assert "reason=tls_alpn_refused" in session_end(front, listener, port, since)


def read_until(proc: subprocess.Popen, marker: bytes, timeout: float = TIMEOUT) -> bytes:
    """What `proc` wrote to stdout until `marker` (or EOF), waiting at most `timeout` seconds."""
    out, deadline = b"", time.monotonic() + timeout
    while marker not in out:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise AssertionError(f"no {marker!r} in {out[-2000:]!r}")
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        out += chunk
    return out


def renegotiation_refused(port: int, ca_file: str, command: bytes, answer: bytes,
                          before_renegotiating=lambda: None) -> bytes:
    """`openssl s_client -tls1_2` on `port`: after the greeting it sends `command` and reads
    until `answer`, then (once `before_renegotiating()` returned) asks to renegotiate, which
    must fail with OpenSSL's no_renegotiation alert (OP_NO_RENEGOTIATION) and end s_client.
    Returns what s_client printed up to the greeting."""
    proc = subprocess.Popen(
        ["openssl", "s_client", "-tls1_2", "-connect", f"{HOST}:{port}", "-CAfile", ca_file,
         "-verify_return_error"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        greeting = read_until(proc, b"mailproxy ready.")
        proc.stdin.write(command)
        proc.stdin.flush()
        read_until(proc, answer)
        before_renegotiating()
        proc.stdin.write(b"R\n")  # s_client's command letter: renegotiate
        proc.stdin.flush()
        read_until(proc, b"\x00never\x00")  # until s_client ends: the renegotiation failed
        assert proc.wait(timeout=TIMEOUT) != 0
        assert b"no renegotiation" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    return greeting


def test_client_renegotiation_refused_session_ends_cleanly(front, ca, tls_files):
    """A TLS 1.2 client asking to renegotiate gets OpenSSL's no_renegotiation alert (the
    listeners set OP_NO_RENEGOTIATION), its session ends without a crash, and others go on."""
    greeting = renegotiation_refused(front.port("imaps"), tls_files["ca"], b"a NOOP\r\n",
                                     b"a OK NOOP completed.")
    assert b"* OK [CAPABILITY" in greeting
    with tls_connect(front.port("imaps"), ca, "mail.example.com") as tls:
        assert tls.recv(200).startswith(b"* OK [CAPABILITY IMAP4rev1")
    assert "session_crash" not in front.logs()


# --------------------------------------------------------------------------- plaintext policy


def test_plaintext_login_refused_before_starttls(front, ca, user):
    raw = Raw(front.port("imap_strict"))
    greeting = raw.line()
    assert greeting == (b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ STARTTLS LOGINDISABLED] "
                        b"mailproxy ready.\r\n")
    raw.send(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert raw.line() == b"a " + PLAINTEXT_NO + b"\r\n"
    raw.send(b"b AUTHENTICATE PLAIN AHVzZXIAcGFzcw==\r\n")
    assert raw.line() == b"b " + PLAINTEXT_NO + b"\r\n"
    raw.send(b"c LOGOUT\r\n")
    assert raw.rest() == b"* BYE Logging out.\r\nc OK Logout completed.\r\n"


def test_plaintext_login_refused_on_plain_listener(front, user):
    raw = Raw(front.port("imap_plain_strict"))
    assert raw.line() == (b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ LOGINDISABLED] "
                          b"mailproxy ready.\r\n")
    raw.send(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert raw.line() == b"a " + PLAINTEXT_NO + b"\r\n"
    raw.close()


@pytest.mark.parametrize("listener", ["pop3_strict", "pop3_plain_strict"])
def test_pop3_plaintext_user_refused(front, listener):
    raw = Raw(front.port(listener))
    assert raw.line() == b"+OK mailproxy ready.\r\n"
    raw.send(b"USER someone\r\n")
    assert raw.line() == POP3_PLAINTEXT_ERR + b"\r\n"
    raw.send(b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n")
    assert raw.line() == POP3_PLAINTEXT_ERR + b"\r\n"
    raw.send(b"QUIT\r\n")
    assert raw.rest() == b"+OK Logging out.\r\n"


def test_require_tls_imap_login_without_starttls_closes(front, user):
    since = log_mark(front)
    raw = Raw(front.port("imap_required"))
    assert raw.line() == (b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ STARTTLS LOGINDISABLED] "
                          b"mailproxy ready.\r\n")
    raw.send(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert raw.rest() == b"a " + PLAINTEXT_NO + b"\r\n* BYE TLS required: use STARTTLS.\r\n"
    assert "reason=tls_required" in session_end(front, "imap_required", raw.port, since)


def test_require_tls_pop3_user_without_stls_closes(front):
    since = log_mark(front)
    raw = Raw(front.port("pop3_required"))
    assert raw.line() == b"+OK mailproxy ready.\r\n"
    raw.send(b"USER someone\r\n")
    assert raw.rest() == POP3_PLAINTEXT_ERR + b"\r\n"
    assert "reason=tls_required" in session_end(front, "pop3_required", raw.port, since)


def test_require_tls_allows_login_after_starttls(front, ca, user):
    imap = imaplib.IMAP4(HOST, front.port("imap_required"), timeout=TIMEOUT)
    assert imap.starttls(ssl_context=client_context(ca))[0] == "OK"
    assert imap.login(*user)[0] == "OK"
    assert imap.logout()[0] == "BYE"
    pop = poplib.POP3(HOST, front.port("pop3_required"), timeout=TIMEOUT)
    pop.stls(context=client_context(ca))
    assert pop.user(user[0]) == b"+OK"
    assert pop.pass_(user[1]) == b"+OK Logged in."
    assert pop.quit().startswith(b"+OK")


# --------------------------------------------------------------------------- injection


def test_starttls_with_pipelined_login_refused(front):
    since = log_mark(front)
    raw = Raw(front.port("imap_starttls"))
    assert raw.line().startswith(b"* OK [CAPABILITY IMAP4rev1")
    raw.send(b"a STARTTLS\r\nb LOGIN a b\r\n")
    assert raw.rest() == b"a BAD Data after STARTTLS refused.\r\n"  # no OK, no handshake
    assert "reason=starttls_injection" in session_end(front, "imap_starttls", raw.port, since)


def test_stls_with_pipelined_user_refused(front):
    since = log_mark(front)
    raw = Raw(front.port("pop3_starttls"))
    assert raw.line() == b"+OK mailproxy ready.\r\n"
    raw.send(b"STLS\r\nUSER a\r\n")
    assert raw.rest() == b"-ERR Data after STLS refused.\r\n"
    assert "reason=starttls_injection" in session_end(front, "pop3_starttls", raw.port, since)


@pytest.fixture
def fake_proxy(proxy_factory, dovecot):
    """`start(script, protocol, tls)`: a fake upstream and a proxy relaying to it."""
    fakes = []

    def start(script, protocol: str, tls: str = "starttls"):
        fake = fake_upstream.FakeUpstream(script)
        fakes.append(fake)
        config = relay_config(dovecot, listeners=(protocol,), allow_plaintext_auth=True)
        config["upstreams"]["main"][protocol] = {"port": fake.port, "tls": tls}
        proxy = proxy_factory(config)
        assert fake.wait_connection() == b""  # the health check: greeting read, nothing sent
        return fake, proxy

    yield start
    for fake in fakes:
        fake.close()


def test_upstream_imap_data_after_starttls_ok_aborts(fake_proxy):
    fake, proxy = fake_proxy(fake_upstream.imap_injects_after_starttls, "imap")
    raw = Raw(proxy.port("imap"))
    raw.line()
    raw.send(b"a LOGIN user@example.com secret\r\n")
    assert raw.line() == b"a " + IMAP_UNAVAILABLE + b"\r\n"
    received = fake.wait_connection()
    assert received == b"P1 STARTTLS\r\n"  # no ClientHello, no LOGIN after the injected line
    line = wait_log(proxy, r"event=upstream_error ")
    assert "reason=protocol" in line and 'detail="data after STARTTLS OK before handshake"' in line
    assert metric(proxy, "mailproxy_starttls_total", side="upstream", protocol="imap",
                  result="injection") == 1


def test_upstream_pop3_data_after_stls_ok_aborts(fake_proxy):
    fake, proxy = fake_proxy(fake_upstream.pop3_injects_after_stls, "pop3")
    raw = Raw(proxy.port("pop3"))
    raw.line()
    raw.send(b"USER user@example.com\r\nPASS secret\r\n")
    assert raw.line() == b"+OK\r\n"
    assert raw.line() == POP3_UNAVAILABLE + b"\r\n"
    assert fake.wait_connection() == b"CAPA\r\nSTLS\r\n"
    line = wait_log(proxy, r"event=upstream_error ")
    assert "reason=protocol" in line and 'detail="data after STLS +OK before handshake"' in line
    assert metric(proxy, "mailproxy_starttls_total", side="upstream", protocol="pop3",
                  result="injection") == 1


def test_upstream_preauth_with_starttls_required_aborts(fake_proxy):
    fake, proxy = fake_proxy(fake_upstream.imap_preauth, "imap")
    raw = Raw(proxy.port("imap"))
    raw.line()
    raw.send(b"a LOGIN user@example.com secret\r\n")
    assert raw.line() == b"a " + IMAP_UNAVAILABLE + b"\r\n"
    assert fake.wait_connection() == b""  # the proxy sent nothing at all to a PREAUTH server
    line = wait_log(proxy, r"event=upstream_error ")
    assert 'detail="PREAUTH greeting where TLS is required"' in line


# --------------------------------------------------------------------------- upstream TLS


UPSTREAM_CASES = ("implicit", "starttls", "servername", "wrongname", "unknownca", "noverify")


@pytest.fixture(scope="module")
def tls_dovecot(dovecot_root, tls_files):
    instance = start_dovecot(dovecot_root, tls=tls_files["main"])
    yield instance
    instance.stop()


@pytest.fixture(scope="module", params=["epoll", "tasks"])
def back(request, tls_dovecot, tls_files, tmp_path_factory):
    """Once per relay path, as `front`."""
    d = tls_dovecot
    config = relay_config(d, allow_plaintext_auth=True)
    config["relay"] = {"engine": request.param}

    def upstream(tls, **extra):
        imap_port = d.imaps_port if tls == "implicit" else d.imap_port
        pop3_port = d.pop3s_port if tls == "implicit" else d.pop3_port
        return {"host": HOST, "imap": {"port": imap_port, "tls": tls},
                "pop3": {"port": pop3_port, "tls": tls}, **extra}

    ca_file = tls_files["ca"]
    config["upstreams"] = {
        "implicit": upstream("implicit", ca_file=ca_file),
        "starttls": upstream("starttls", ca_file=ca_file),
        "servername": upstream("implicit", ca_file=ca_file, server_name="mail.example.com"),
        "wrongname": upstream("implicit", ca_file=ca_file, server_name="wrong.example"),
        "unknownca": upstream("implicit"),
        "noverify": upstream("implicit", verify=False),
    }
    config["routes"] = [{"match": f"*@{case}.test", "upstream": case} for case in UPSTREAM_CASES]
    proxy = start_proxy(config, tmp_path_factory, "tls-back")
    yield proxy
    stop_proxy(proxy)


def upstream_user(dovecot, case: str) -> tuple[str, str]:
    return dovecot.add_user(f"u{time.monotonic_ns()}@{case}.test")


@pytest.mark.parametrize("case", ["implicit", "starttls", "servername", "noverify"])
def test_upstream_tls_login_works(back, tls_dovecot, case):
    name, password = upstream_user(tls_dovecot, case)
    tls_dovecot.deliver(name, message(case))
    imap = imaplib.IMAP4(HOST, back.port("imap"), timeout=TIMEOUT)
    assert imap.login(name, password)[0] == "OK"
    assert imap.select("INBOX") == ("OK", [b"1"])
    assert imap.logout()[0] == "BYE"
    pop = poplib.POP3(HOST, back.port("pop3"), timeout=TIMEOUT)
    assert pop.user(name) == b"+OK"
    assert pop.pass_(password) == b"+OK Logged in."
    assert pop.stat()[0] == 1
    assert pop.quit().startswith(b"+OK")
    if case == "noverify":  # said once, at startup, as a warning
        assert len(re.findall(r"WARNING event=upstream_tls_unverified upstream=noverify\b",
                              back.logs())) == 1


def test_upstream_starttls_is_really_used(back, tls_dovecot):
    before = {p: metric(back, "mailproxy_starttls_total", side="upstream", protocol=p, result="ok")
              for p in ("imap", "pop3")}
    name, password = upstream_user(tls_dovecot, "starttls")
    imap = imaplib.IMAP4(HOST, back.port("imap"), timeout=TIMEOUT)
    imap.login(name, password)
    imap.logout()
    pop = poplib.POP3(HOST, back.port("pop3"), timeout=TIMEOUT)
    pop.user(name)
    assert pop.pass_(password) == b"+OK Logged in."
    pop.quit()
    for p in ("imap", "pop3"):
        assert metric(back, "mailproxy_starttls_total", side="upstream", protocol=p,
                      result="ok") == before[p] + 1


@pytest.mark.parametrize("case, why", [
    ("wrongname", "Hostname mismatch, certificate is not valid for 'wrong.example'"),
    ("unknownca", "unable to get local issuer certificate"),
])
def test_upstream_certificate_refused(back, tls_dovecot, case, why):
    name, password = upstream_user(tls_dovecot, case)
    raw = Raw(back.port("imap"))
    raw.line()
    raw.send(b"a LOGIN %s %s\r\n" % (name.encode(), password.encode()))
    assert raw.line() == b"a " + IMAP_UNAVAILABLE + b"\r\n"
    raw.close()
    pop = Raw(back.port("pop3"))
    pop.line()
    pop.send(b"USER %s\r\nPASS %s\r\n" % (name.encode(), password.encode()))
    assert pop.line() == b"+OK\r\n"
    assert pop.line() == POP3_UNAVAILABLE + b"\r\n"
    pop.close()
    user_field = re.escape(name)
    for protocol in ("imap", "pop3"):
        line = wait_log(back, rf"event=upstream_error listener={protocol} .*user={user_field} ")
        assert f"upstream={case} reason=tls " in line
        assert f"certificate verification failed: {why}" in line, line
    assert not re.search(rf"event=auth .*user={user_field} .*result=success", back.logs())


# --------------------------------------------------------------------------- certificate reload


def test_sighup_reloads_certificates(proxy_factory, dovecot, user, ca, tmp_path):
    directory = tmp_path / "certs"
    cert_a = write_pair(ca.issue_cert("127.0.0.1", "mail.example.com"), directory, "a")
    cert_b = write_pair(ca.issue_cert("127.0.0.1", "other.example.com"), directory, "b")
    live_cert, live_key = str(directory / "live.crt"), str(directory / "live.key")
    shutil.copy(cert_a[0], live_cert)
    shutil.copy(cert_a[1], live_key)
    config = relay_config(dovecot, listeners=("imap",),
                          imap={"tls": "implicit",
                                "certificates": [{"cert": live_cert, "key": live_key}]})
    proxy = proxy_factory(config)
    ctx = client_context(ca)

    old = imaplib.IMAP4_SSL(HOST, proxy.port("imap"), ssl_context=ctx, timeout=TIMEOUT)
    assert old.sock.getpeercert()["subjectAltName"] == (("IP Address", "127.0.0.1"),
                                                        ("DNS", "mail.example.com"))
    assert old.login(*user)[0] == "OK"

    for src, dst in ((cert_b[0], live_cert), (cert_b[1], live_key)):
        shutil.copy(src, dst + ".new")
        os.replace(dst + ".new", dst)
    proxy.send_signal(signal.SIGHUP)
    wait_log(proxy, r"event=reloaded ")

    new = imaplib.IMAP4_SSL(HOST, proxy.port("imap"), ssl_context=ctx, timeout=TIMEOUT)
    assert new.sock.getpeercert()["subjectAltName"] == (("IP Address", "127.0.0.1"),
                                                        ("DNS", "other.example.com"))
    assert new.login(*user)[0] == "OK"
    assert new.logout()[0] == "BYE"
    # the session opened before the reload keeps its TLS connection and keeps working
    assert old.select("INBOX")[0] == "OK"
    assert old.noop()[0] == "OK"
    assert old.logout()[0] == "BYE"
