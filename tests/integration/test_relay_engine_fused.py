"""The relay engine's fused step (proxy/relay/imap_fused.py) against a real Dovecot: the same
command sequence through a proxy whose sessions take it (one command per write, each answered
before the next) and through one whose sessions never do (`audit: true` keeps every session on
the full path), the counted commands, durations and bytes compared, and against what the client
sent and read. tests/unit/test_relay_fused.py compares the two paths chunk by chunk."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from support.polling import wait_for
from support.proxyproc import relay_config

from .test_relay_engine_tls import ca, cert_files  # noqa: F401 (fixtures)
from .test_tls import client_context

HOST = "127.0.0.1"

# None: a message is delivered there (the next NOOP's answer has untagged EXISTS and RECENT
# lines before its tagged line: the fused step takes both); a literal's answer (BODY[]) goes
# by the full path, and the step takes the chunks after it again
SEQUENCE = ([b"NOOP"] * 20 + [b"SELECT INBOX", b"UID FETCH 1:* (FLAGS)", b"noop", b"BOGUS x",
                              b"STATUS INBOX (MESSAGES)", b"UID SEARCH ALL", b"CHECK", None,
                              b"NOOP", b"UID FETCH 1 BODY[]", b"FETCH 1:* (FLAGS)",
                              b'LIST "" *', b"EXAMINE INBOX"]
            + [b"Noop"] * 5)


def scrape(proxy) -> dict[str, float]:
    """The samples this test compares: commands, their durations' counts, bytes relayed."""
    with urllib.request.urlopen(f"http://{HOST}:{proxy.metrics_port}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in lines)
            if name.startswith(("mailproxy_commands_total{", "mailproxy_bytes_total{",
                                "mailproxy_command_duration_seconds_count{"))}


def run(proxy, dovecot, user, tls) -> tuple[int, int]:
    """Log in, the sequence one command at a time, LOGOUT; the bytes sent and read after the
    login. `tls`: the client's ssl context (implicit TLS), or None."""
    sock = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert file.readline().startswith(b"a OK")
    sent = read = 0
    for n, command in enumerate([*SEQUENCE, b"LOGOUT"]):
        if command is None:
            dovecot.deliver(user[0], b"Subject: two\r\n\r\nbody\r\n")
            continue
        line = b"t%d %s\r\n" % (n, command)
        sock.sendall(line)
        sent += len(line)
        while True:
            answer = file.readline()
            assert answer, command
            read += len(answer)
            if answer.startswith(b"t%d " % n):
                break
    assert file.readline() == b""   # (the session ended)
    sock.close()
    return sent, read


def outcome(proxy_factory, dovecot, user, audit: bool, tls
            ) -> tuple[int, int, dict[str, float]]:
    extra = {} if tls is None else {"tls": "implicit", "certificates": [tls[0]]}
    config = relay_config(dovecot, allow_plaintext_auth=True, audit=audit, **extra)
    config["relay"] = {"engine": "epoll"}
    proxy = proxy_factory(config)
    sent, read = run(proxy, dovecot, user, None if tls is None else tls[1])
    end = wait_for(lambda: [line for line in proxy.logs().splitlines()
                            if "event=session_end" in line and "upstream=main" in line],
                   "the session end")[0]
    samples = wait_for(lambda: (s := scrape(proxy)) and any(
        k.startswith("mailproxy_bytes_total{") for k in s) and s, "bytes counted")
    fields = dict(part.split("=", 1) for part in end.split() if "=" in part)
    # the session's own byte counts (the Conns': what the admin API's `who` shows live)
    samples["session bytes_in"] = float(fields["bytes_in"])
    samples["session bytes_out - read"] = float(fields["bytes_out"]) - read
    return sent, read, samples


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "implicit-tls"])
def test_fused_and_full_paths_count_the_same(proxy_factory, dovecot, user, tls, request):
    """Dovecot's answers vary in length from run to run (their timings): the bytes from the
    upstream are compared as what was counted beyond what the client read."""
    context = None
    if tls:
        cert, key, _ = request.getfixturevalue("cert_files")
        context = ({"cert": cert, "key": key}, client_context(request.getfixturevalue("ca")))
    dovecot.deliver(user[0], b"Subject: one\r\n\r\nbody\r\n")
    fused_sent, fused_read, fused = outcome(proxy_factory, dovecot, user, False, context)
    full_sent, full_read, full = outcome(proxy_factory, dovecot, user, True, context)
    up = 'mailproxy_bytes_total{direction="client_to_upstream",protocol="imap"}'
    down = 'mailproxy_bytes_total{direction="upstream_to_client",protocol="imap"}'
    assert fused_sent == full_sent
    assert fused[down] - fused_read == full[down] - full_read
    assert fused[up] == full[up]
    for samples in (fused, full):
        del samples[down]
    assert fused == full
    assert fused['mailproxy_commands_total{command="NOOP",protocol="imap",status="OK"}'] == 27
    assert fused['mailproxy_command_duration_seconds_count{command="NOOP",protocol="imap"}'] == 27
    assert fused['mailproxy_commands_total{command="other",protocol="imap",status="BAD"}'] == 1
