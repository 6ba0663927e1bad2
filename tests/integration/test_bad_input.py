"""Bad input against the relay: each case gets the right reply or close, the proxy logs no
Traceback, and a concurrent session that logged in before the bad input keeps working.

One proxy serves the module (IMAP and POP3 listeners, `limits.max_line: 16KiB` so the post-login
overlong line is cheap). Users `*@fake.test` are routed to a scripted fake upstream (threads and
sockets, one thread per connection) that plays an IMAP or POP3 server vanishing in the middle of a
large FETCH or RETR; everyone else goes to the session's real Dovecot. The timeout cases use their
own proxy with small timeouts.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import random
import re
import socket
import time

import pytest

from support.proxyproc import ProxyProcess, relay_config, traceback_report
from support.threaded_server import ThreadedServer

HOST = "127.0.0.1"
TIMEOUT = 30.0   # a bound for a hung proxy, never reached when green, even at load 20
MAX_LINE = 16 * 1024


def message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subject.encode() +
            b"\r\nMessage-ID: <" + os.urandom(6).hex().encode() + b"@example.com>\r\n\r\n" + body)


# --------------------------------------------------------------------------- a scripted upstream


class FakeServer:
    """Listens on 127.0.0.1 and runs `script(sock, file)` in a thread per connection."""

    def __init__(self, script):
        self.script = script
        self.errors: list[BaseException] = []
        self._server = ThreadedServer(self._run, "scripted-upstream")
        self.port = self._server.port

    def _run(self, sock: socket.socket) -> None:
        sock.settimeout(TIMEOUT)
        try:
            with sock, sock.makefile("rb") as file:
                self.script(sock, file)
        except Exception as exc:  # noqa: BLE001 - checked by the tests through .errors
            self.errors.append(exc)

    def close(self) -> None:
        self._server.close()


BIG = 10_000_000


def fake_imap(sock: socket.socket, file) -> None:
    """Logs anyone in; on FETCH announces a 10 MB literal, sends 300 KB of it and closes."""
    sock.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] fake ready\r\n")
    while True:
        line = file.readline(65536)
        if not line:
            return
        tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
        name = rest.split(b" ", 1)[0].upper()
        if name in (b"AUTHENTICATE", b"LOGIN"):
            sock.sendall(tag + b" OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
        elif name == b"SELECT":
            sock.sendall(b"* 1 EXISTS\r\n" + tag + b" OK [READ-WRITE] Select completed\r\n")
        elif name == b"FETCH":
            sock.sendall(b"* 1 FETCH (BODY[] {%d}\r\n" % BIG + b"x" * 300_000)
            return  # gone in the middle of the literal
        elif name == b"LOGOUT":
            sock.sendall(b"* BYE bye\r\n" + tag + b" OK Logout\r\n")
            return
        else:
            sock.sendall(tag + b" OK done\r\n")


def fake_pop3(sock: socket.socket, file) -> None:
    """Logs anyone in; on RETR sends +OK and 300 KB of a 10 MB body, then closes."""
    sock.sendall(b"+OK fake ready\r\n")
    while True:
        line = file.readline(65536)
        if not line:
            return
        name = line.split(None, 1)[0].upper() if line.strip() else b""
        if name == b"CAPA":
            sock.sendall(b"+OK\r\nUSER\r\nUIDL\r\nSASL PLAIN\r\n.\r\n")
        elif name == b"RETR":
            sock.sendall(b"+OK %d octets\r\n" % BIG + b"y" * 78 + b"\r\n" +
                         b"".join(b"line %06d " % i + b"z" * 60 + b"\r\n" for i in range(4000)))
            return  # gone in the middle of the body
        elif name == b"QUIT":
            sock.sendall(b"+OK bye\r\n")
            return
        else:
            sock.sendall(b"+OK\r\n")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fakes():
    imap, pop3 = FakeServer(fake_imap), FakeServer(fake_pop3)
    yield imap, pop3
    imap.close()
    pop3.close()


@pytest.fixture(scope="module")
def module_proxy(dovecot, fakes, tmp_path_factory):
    config = relay_config(dovecot, allow_plaintext_auth=True, limits={"max_line": MAX_LINE})
    config["upstreams"]["fake"] = {"host": HOST, "imap": {"port": fakes[0].port, "tls": "none"},
                                   "pop3": {"port": fakes[1].port, "tls": "none"}}
    config["routes"].insert(0, {"match": "*@fake.test", "upstream": "fake"})
    proxy = ProxyProcess(config, tmp_path_factory.mktemp("bad-input-proxy"))
    yield proxy
    proxy.stop()


@pytest.fixture
def proxy(module_proxy):
    """The module's proxy; the test fails if its log gains a Traceback."""
    yield module_proxy
    report = traceback_report([module_proxy])
    if report:
        pytest.fail(report, pytrace=False)


# --------------------------------------------------------------------------- helpers


class Raw:
    """A raw client socket with its own read buffer (a makefile() reader is unusable after a
    timeout)."""

    def __init__(self, proxy: ProxyProcess, listener: str):
        self.listener = listener
        self.log_offset = len(proxy.logs())  # client ports get reused: look at later lines only
        self.sock = socket.create_connection((HOST, proxy.port(listener)), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = self.sock.getsockname()[1]
        self.buffer = bytearray()

    @property
    def client(self) -> str:
        return f"listener={self.listener} client=127.0.0.1:{self.port}"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """One line (b"" at EOF)."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                data, self.buffer = bytes(self.buffer), bytearray()
                return data
            self.buffer += chunk
        end = self.buffer.index(b"\n") + 1
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def until_closed(self, timeout: float = TIMEOUT) -> bytes:
        """Everything until the proxy closes; fails if it does not within `timeout`. A reset
        counts as closed."""
        data, self.buffer = self.buffer, bytearray()
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.25)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return bytes(data)
            except (socket.timeout, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"the proxy did not close the connection within {timeout}s; "
                                f"received {bytes(data[-500:])!r}")
                continue
            if not chunk:
                return bytes(data)
            data += chunk

    def close(self) -> None:
        self.sock.close()


def wait_log(proxy: ProxyProcess, pattern: str, timeout: float = TIMEOUT, offset: int = 0) -> str:
    """The first proxy log line from `offset` on matching `pattern` (a regex), waiting for it."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        for line in proxy.logs()[offset:].splitlines():
            if regex.search(line):
                return line
        if time.monotonic() > deadline:
            tail = "\n".join(proxy.logs().splitlines()[-20:])
            pytest.fail(f"no proxy log line matches {pattern!r} after {timeout}s; tail:\n{tail}")
        time.sleep(0.05)


def session_end(proxy: ProxyProcess, raw: Raw) -> str:
    """The session_end line of `raw`'s session (closed first: the proxy reads what a client
    still sends after it ended a session, until the client closes or a second passes)."""
    raw.close()
    return wait_log(proxy, rf"event=session_end {re.escape(raw.client)} .*reason=",
                    offset=raw.log_offset)


def imap_login(proxy: ProxyProcess, user: tuple[str, str], listener: str = "imap") -> Raw:
    raw = Raw(proxy, listener)
    assert raw.line().startswith(b"* OK")
    raw.send(b"L LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert raw.line().startswith(b"L OK"), "login through the proxy failed"
    return raw


def pop3_login(proxy: ProxyProcess, user: tuple[str, str]) -> Raw:
    raw = Raw(proxy, "pop3")
    assert raw.line().startswith(b"+OK")
    raw.send(b"USER %s\r\nPASS %s\r\n" % (user[0].encode(), user[1].encode()))
    assert raw.line().startswith(b"+OK") and raw.line().startswith(b"+OK"), "POP3 login failed"
    return raw


class ImapWitness:
    """A session logged in before the bad input; `check()` proves it still works."""

    def __init__(self, proxy: ProxyProcess, dovecot):
        name, password = dovecot.add_user()
        self.msg = message("witness", b"still here\r\n")
        dovecot.deliver(name, self.msg)
        self.imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=TIMEOUT)
        self.imap.login(name, password)
        assert self.imap.select("INBOX") == ("OK", [b"1"])

    def check(self) -> None:
        assert self.imap.noop()[0] == "OK"
        typ, data = self.imap.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == self.msg
        self.imap.logout()


class Pop3Witness:
    def __init__(self, proxy: ProxyProcess, dovecot):
        name, password = dovecot.add_user()
        self.msg = message("witness", b"still here\r\n")
        dovecot.deliver(name, self.msg)
        self.pop = poplib.POP3(HOST, proxy.port("pop3"), timeout=TIMEOUT)
        self.pop.user(name)
        self.pop.pass_(password)

    def check(self) -> None:
        assert self.pop.stat() == (1, len(self.msg))
        _, lines, _ = self.pop.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == self.msg
        self.pop.quit()


@pytest.fixture
def imap_witness(proxy, dovecot):
    witness = ImapWitness(proxy, dovecot)
    yield witness
    witness.check()  # after the bad input of the test: the other session is unaffected


@pytest.fixture
def pop3_witness(proxy, dovecot):
    witness = Pop3Witness(proxy, dovecot)
    yield witness
    witness.check()


# --------------------------------------------------------------------------- IMAP


def test_imap_overlong_line_before_login(proxy, imap_witness):
    raw = Raw(proxy, "imap")
    raw.line()
    raw.send(b"a1 LOGIN " + b"x" * 10_000 + b" pw\r\n")
    assert raw.line() == b"a1 BAD [TOOBIG] Line too long\r\n"
    raw.send(b"a2 NOOP\r\n")  # resynchronised: the connection goes on
    assert raw.line().startswith(b"a2 OK")
    raw.close()


def test_imap_overlong_line_after_login(proxy, imap_witness, user):
    """Held lines: the relay forwards a line only once it is complete and valid, so the overlong
    line, sent in pieces, never reaches Dovecot: the proxy answers BAD and the session goes on
    (had a piece been forwarded, Dovecot would take `a2 NOOP` as the end of that line)."""
    raw = imap_login(proxy, user)
    line = b"a1 SELECT " + b"x" * (MAX_LINE + 1000) + b"\r\n"
    for start in range(0, len(line), 5000):
        raw.send(line[start:start + 5000])
    assert raw.line() == b"a1 BAD [TOOBIG] Line too long\r\n"
    raw.send(b"a2 NOOP\r\n")
    assert raw.line().startswith(b"a2 OK NOOP completed")
    raw.send(b"a3 SELECT INBOX\r\n")
    assert _until_tagged(raw, b"a3").startswith(b"a3 OK [READ-WRITE]")
    raw.send(b"a4 LOGOUT\r\n")
    # the relay answers a LOGOUT at rest itself (Dovecot's own answer carries its timings)
    assert re.fullmatch(rb"\* BYE Logging out\r\na4 OK Logout completed( \(.*\))?\.\r\n",
                        raw.until_closed())
    assert "reason=client_logout" in session_end(proxy, raw)


def _until_tagged(raw: Raw, tag: bytes) -> bytes:
    """Skip untagged lines up to the tagged reply for `tag`, and return it."""
    while True:
        line = raw.line()
        if not line.startswith(b"* "):
            assert line.startswith(tag + b" "), line
            return line


def test_imap_syntax_errors_after_login_are_answered_in_place(proxy, imap_witness, user):
    """Dovecot answers a syntax error with BAD and goes on; so does the relay for lines it
    did not forward, pipelined between good commands or not, until `bad_commands` (20)."""
    raw = imap_login(proxy, user)
    raw.send(b"a1 NOOP\r\n(x NOOP\r\na2\r\na3 NOOP\r\n")
    replies = sorted(raw.line() for _ in range(4))   # the proxy's own may come first
    assert replies[0] == b"* BAD [CLIENTBUG] Invalid tag\r\n"
    assert replies[1].startswith(b"a1 OK NOOP completed")
    assert replies[2] == b"a2 BAD [CLIENTBUG] Missing command name\r\n"
    assert replies[3].startswith(b"a3 OK NOOP completed")
    raw.send(b"".join(b"b%d\r\n" % n for n in range(18)) + b"c NOOP\r\n")
    reply = raw.until_closed()
    assert reply == b"".join(b"b%d BAD [CLIENTBUG] Missing command name\r\n" % n
                             for n in range(18)) + b"* BYE Too many invalid commands.\r\n"
    assert "reason=bad_commands" in session_end(proxy, raw)


def test_imap_error_after_a_literal_still_closes(proxy, imap_witness, user):
    """A command whose first line part is upstream already cannot be taken back: BYE."""
    raw = imap_login(proxy, user)
    raw.send(b"a1 APPEND INBOX {3}\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"abc " + b"x" * (MAX_LINE + 1000) + b"\r\n")
    assert raw.until_closed() == (b"a1 BAD [TOOBIG] Line too long\r\n"
                                  b"* BYE Protocol error, closing.\r\n")
    assert "reason=protocol_error" in session_end(proxy, raw)


@pytest.mark.parametrize("mechanism", [b"PLAIN", b"LOGIN"])
def test_imap_overlong_answer_to_an_authenticate_prompt(proxy, imap_witness, user, mechanism):
    """The AUTHENTICATE ends with its own tagged BAD; the parser skips the rest of the line, so
    the session goes on and logs in (the line was answered with an untagged BAD, then the
    session closed without a word)."""
    raw = Raw(proxy, "imap")
    raw.line()
    raw.send(b"a1 AUTHENTICATE " + mechanism + b"\r\n")
    assert raw.line().startswith(b"+ ")
    answer = b"QUFB" * 2500 + b"\r\n"   # 10,000 bytes: over preauth_max_line (8 KiB)
    raw.send(answer[:5000])
    raw.send(answer[5000:])
    assert raw.line() == b"a1 BAD [TOOBIG] Line too long\r\n"
    raw.send(b"a2 LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert raw.line().startswith(b"a2 OK [CAPABILITY ")
    raw.send(b"a3 NOOP\r\n")
    assert raw.line().startswith(b"a3 OK NOOP completed")
    raw.close()


def test_imap_endless_answer_to_an_authenticate_prompt(proxy, imap_witness):
    """Past the parser's resync budget (16 x the line limit) the line is fatal: BYE, close."""
    raw = Raw(proxy, "imap")
    raw.line()
    raw.send(b"a1 AUTHENTICATE PLAIN\r\n")
    assert raw.line().startswith(b"+ ")
    try:
        for _ in range(20):
            raw.send(b"A" * 8192)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert raw.until_closed() == (b"a1 BAD [TOOBIG] Line too long\r\n"
                                  b"* BYE [TOOBIG] Line too long\r\n")
    assert "reason=protocol_error" in session_end(proxy, raw)


def _max_id() -> bytes:
    """RFC 2971 3.3: 30 field/value pairs, fields of 30 octets, values of 1024: ~32 KB."""
    return b"ID (" + b" ".join(b'"%s" "%s"' % (b"f%029d" % n, b"v" * 1024) for n in range(30)) + b")"


def test_imap_id_at_the_rfc2971_maximum_before_and_after_login(proxy, imap_witness, user):
    command = _max_id()
    assert len(command) > MAX_LINE   # beyond preauth_max_line (8 KiB) and max_line (16 KiB)
    raw = Raw(proxy, "imap")
    raw.line()
    raw.send(b"a1 " + command + b"\r\n")   # answered by the proxy itself
    assert raw.line().startswith(b"* ID (") and raw.line().startswith(b"a1 OK")
    raw.send(b"a2 NOOP " + b"x" * 9000 + b"\r\n")   # anything else keeps the tight limit
    assert raw.line() == b"a2 BAD [TOOBIG] Line too long\r\n"
    raw.send(b"L LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert raw.line().startswith(b"L OK")
    raw.send(b"a3 " + command + b"\r\n")   # relayed to Dovecot
    assert raw.line().startswith(b"* ID (") and raw.line().startswith(b"a3 OK")
    raw.send(b"a4 NOOP\r\n")
    assert raw.line().startswith(b"a4 OK")
    raw.close()


def test_imap_literal_over_the_limit(proxy, imap_witness, user):
    raw = Raw(proxy, "imap")
    raw.line()
    raw.send(b"a1 LOGIN {999999999}\r\n")  # before login (limit 8192): refused, no continuation
    assert raw.line() == b"a1 BAD [TOOBIG] Literal too big\r\n"
    raw.send(b"a2 NOOP\r\n")
    assert raw.line().startswith(b"a2 OK")
    raw.close()
    # after login (limit 64 MiB): refused without a continuation, not forwarded, and the
    # session goes on (the client sends no payload without a continuation, RFC 3501 7.5)
    raw = imap_login(proxy, user)
    raw.send(b"a3 APPEND INBOX {999999999}\r\n")
    assert raw.line() == b"a3 BAD [TOOBIG] Literal too big\r\n"
    raw.send(b"a4 NOOP\r\n")
    assert raw.line().startswith(b"a4 OK NOOP completed")
    raw.close()
    # a non-synchronizing literal cannot be skipped: one BYE and close, before and after login
    raw = Raw(proxy, "imap")
    raw.line()
    raw.send(b"a4 LOGIN {999999999+}\r\n")
    assert raw.until_closed() == b"* BYE [TOOBIG] Literal too big\r\n"
    assert "reason=protocol_error" in session_end(proxy, raw)
    raw = imap_login(proxy, user)
    raw.send(b"a5 APPEND INBOX {999999999+}\r\n" + b"x" * 100_000)
    assert raw.until_closed() == b"* BYE [TOOBIG] Literal too big\r\n"
    assert "reason=protocol_error" in session_end(proxy, raw)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_imap_random_bytes_before_login(proxy, imap_witness, seed):
    rng = random.Random(seed)
    raw = Raw(proxy, "imap")
    raw.line()
    try:
        for _ in range(16):  # up to 1 MiB; the proxy must have closed long before
            raw.send(rng.randbytes(65536))
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = raw.until_closed()
    lines = reply.split(b"\r\n")
    assert lines[-1] == b"" and reply, reply[-300:]
    for line in lines[:-1]:
        assert re.match(rb"^\S+ BAD |^\* BYE ", line), line
    assert b"* BYE" in reply


@pytest.mark.parametrize("seed", [5, 6])
def test_imap_random_bytes_after_login(proxy, imap_witness, user, seed):
    rng = random.Random(seed)
    raw = imap_login(proxy, user)
    try:
        for _ in range(16):
            raw.send(rng.randbytes(65536))
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = raw.until_closed()
    for line in reply.split(b"\r\n")[:-1]:  # the proxy's or Dovecot's BAD, then a BYE
        assert re.match(rb"^\S+ BAD |^\* BYE |^\* OK ", line), line
    assert b"* BYE" in reply, reply[-300:]


def test_imap_1000_unknown_commands_before_login(proxy, imap_witness):
    raw = Raw(proxy, "imap")
    raw.line()
    raw.send(b"".join(b"c%d FROB\r\n" % i for i in range(1000)))
    reply = raw.until_closed()
    lines = reply.split(b"\r\n")
    # bad_commands (20): 20 BAD, then BYE and close
    assert lines[:20] == [b"c%d BAD Command unknown or not allowed before login." % i
                          for i in range(20)]
    assert lines[20:] == [b"* BYE Too many invalid commands.", b""]
    assert "reason=bad_commands" in session_end(proxy, raw)


def test_imap_preauth_command_budget(proxy, imap_witness):
    """preauth_commands (20) counts every command, good ones too: the 21st gets BYE."""
    raw = Raw(proxy, "imap")
    raw.line()
    raw.send(b"".join(b"n%d NOOP\r\n" % i for i in range(1000)))
    reply = raw.until_closed()
    lines = reply.split(b"\r\n")
    assert lines[:20] == [b"n%d OK NOOP completed." % i for i in range(20)]
    assert lines[20:] == [b"* BYE Too many commands before login.", b""]
    assert "reason=preauth_commands" in session_end(proxy, raw)


def test_imap_client_gone_mid_append_literal(proxy, imap_witness, dovecot, user):
    raw = imap_login(proxy, user)
    raw.send(b"a1 APPEND INBOX {5000000}\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"x" * 1_000_000)
    raw.close()
    assert "reason=client_closed" in session_end(proxy, raw)
    # the upstream session was closed too: Dovecot logs its disconnect, and nothing was stored
    name, password = user
    deadline = time.monotonic() + TIMEOUT
    pattern = re.compile(rf"imap\({re.escape(name)}\).*Disconnected")
    while not pattern.search(dovecot.log()):
        assert time.monotonic() < deadline, f"Dovecot did not log the disconnect of {name}"
        time.sleep(0.05)
    direct = imaplib.IMAP4(HOST, dovecot.imap_port, timeout=TIMEOUT)
    direct.login(name, password)
    assert direct.select("INBOX", readonly=True) == ("OK", [b"0"])
    direct.logout()


def test_imap_upstream_gone_mid_fetch(proxy, imap_witness, fakes):
    raw = imap_login(proxy, ("victim@fake.test", "pw"))
    raw.send(b"a1 SELECT INBOX\r\n")
    assert raw.line() == b"* 1 EXISTS\r\n"
    assert raw.line().startswith(b"a1 OK")
    raw.send(b"a2 FETCH 1 BODY[]\r\n")
    reply = raw.until_closed()
    assert reply.startswith(b"* 1 FETCH (BODY[] {%d}\r\n" % BIG)
    assert len(reply) < BIG  # cut short: the client sees the close, not a complete response
    assert "reason=upstream_closed" in session_end(proxy, raw)
    assert not fakes[0].errors, fakes[0].errors


@pytest.fixture
def timeout_proxy(proxy_factory, dovecot):
    """Each timer on a listener of its own, so that no session but the one under test races a
    timer: "imap" (default timeouts) for the witness, "imap_login" (login 1 s) for the session
    that never logs in, "imap_idle" (idle 2 s, login at its default) for the one that idles."""
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    imap = config["listeners"][0]
    for name, timeouts in (("imap_login", {"login": "1s"}), ("imap_idle", {"idle": "2s"})):
        config["listeners"].append({**imap, "name": name, "timeouts": timeouts})
    return proxy_factory(config)


def test_imap_login_and_idle_timeouts(timeout_proxy, dovecot, user):
    witness = ImapWitness(timeout_proxy, dovecot)   # on "imap": no timer of this test ends it
    raw = Raw(timeout_proxy, "imap_login")
    raw.line()
    started = time.monotonic()
    # lower bounds only (a loaded machine answers late, never early); the waits stay below
    # the defaults (login 60 s, idle 30 min), so they also tell the configured timers from those
    assert raw.until_closed(30) == b"* BYE Login timeout.\r\n"
    assert 0.8 < time.monotonic() - started
    assert "reason=login_timeout" in session_end(timeout_proxy, raw)
    raw = imap_login(timeout_proxy, user, "imap_idle")
    raw.send(b"a1 SELECT INBOX\r\n")
    while not raw.line().startswith(b"a1 OK"):
        pass
    started = time.monotonic()
    assert raw.until_closed(30) == b"* BYE Autologout; idle for too long.\r\n"
    assert 1.5 < time.monotonic() - started   # the timer started when SELECT arrived
    assert "reason=idle_timeout" in session_end(timeout_proxy, raw)
    witness.check()   # both timers fired on other sessions: this one is untouched


# --------------------------------------------------------------------------- POP3


def test_pop3_overlong_line(proxy, pop3_witness, dovecot, user):
    raw = Raw(proxy, "pop3")
    raw.line()
    raw.send(b"USER " + b"x" * 10_000 + b"\r\n")  # before login
    assert raw.line().startswith(b"-ERR")
    raw.send(b"NOOP\r\n")
    assert raw.line().startswith(b"+OK")
    raw.close()
    dovecot.deliver(user[0], message("one"))
    raw = pop3_login(proxy, user)  # after login: -ERR, and the session goes on
    raw.send(b"LIST " + b"1" * 10_000 + b"\r\nSTAT\r\n")
    assert raw.line().startswith(b"-ERR")
    assert raw.line().startswith(b"+OK 1 ")
    raw.send(b"QUIT\r\n")
    assert raw.until_closed().startswith(b"+OK")


@pytest.mark.parametrize("mechanism", [b"PLAIN", b"LOGIN"])
def test_pop3_overlong_answer_to_an_auth_prompt(proxy, pop3_witness, dovecot, user, mechanism):
    """RFC 5034 4: the AUTH ends with -ERR, the rest of the line is skipped, the session goes
    on and logs in (it used to close without a word)."""
    dovecot.deliver(user[0], message("one"))
    raw = Raw(proxy, "pop3")
    raw.line()
    raw.send(b"AUTH " + mechanism + b"\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"QUFB" * 2500 + b"\r\n")
    assert raw.line() == b"-ERR Line too long\r\n"
    raw.send(b"USER %s\r\nPASS %s\r\nSTAT\r\n" % (user[0].encode(), user[1].encode()))
    assert raw.line().startswith(b"+OK") and raw.line().startswith(b"+OK")
    assert raw.line().startswith(b"+OK 1 ")
    raw.send(b"QUIT\r\n")
    assert raw.until_closed().startswith(b"+OK")


def test_pop3_1000_unknown_commands(proxy, pop3_witness):
    raw = Raw(proxy, "pop3")
    raw.line()
    raw.send(b"".join(b"FROB %d\r\n" % i for i in range(1000)))
    lines = raw.until_closed().split(b"\r\n")
    # bad_commands (20): 20 -ERR, then the last -ERR and close
    assert lines == [b"-ERR Unknown command or not allowed before login."] * 20 + [
        b"-ERR [SYS/PERM] Too many invalid commands.", b""]
    assert "reason=bad_commands" in session_end(proxy, raw)


def test_pop3_preauth_command_budget(proxy, pop3_witness):
    raw = Raw(proxy, "pop3")
    raw.line()
    raw.send(b"NOOP\r\n" * 1000)
    lines = raw.until_closed().split(b"\r\n")
    assert lines == [b"+OK"] * 20 + [b"-ERR [SYS/PERM] Too many commands before login.", b""]
    assert "reason=preauth_commands" in session_end(proxy, raw)


def test_pop3_client_gone_mid_retr(proxy, pop3_witness, dovecot, user):
    name, _ = user
    body = b"".join(b"%08d " % i + os.urandom(30).hex().encode() + b"\r\n"
                    for i in range(20 * 1024 * 1024 // 70))
    dovecot.deliver(name, message("big", body))
    raw = pop3_login(proxy, user)
    raw.send(b"RETR 1\r\n")
    assert raw.line().startswith(b"+OK")
    assert len(raw.read(200_000)) == 200_000
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()  # reset, with most of the 20 MB unread
    assert "reason=client_closed" in session_end(proxy, raw)


def test_pop3_upstream_gone_mid_retr(proxy, pop3_witness, fakes):
    raw = pop3_login(proxy, ("victim@fake.test", "pw"))
    raw.send(b"RETR 1\r\n")
    reply = raw.until_closed()
    assert reply.startswith(b"+OK %d octets\r\n" % BIG)
    assert not reply.endswith(b"\r\n.\r\n")  # cut short, and the client can tell
    assert "reason=upstream_closed" in session_end(proxy, raw)
    assert not fakes[1].errors, fakes[1].errors
