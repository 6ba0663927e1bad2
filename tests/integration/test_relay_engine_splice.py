"""Literal payloads spliced by the relay engine (`relay.splice_min_literal`,
proxy/relay/engine_splice.py) against a real Dovecot with real clients: FETCH of large and small
messages byte-identical with splice on and off (and that splicing really happened: the session
keeps its pipe), literals around the threshold, a client that stops reading mid-literal (the
proxy's memory stays bounded), and the upstream ending mid-literal."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket

import imapclient
import pytest

from support.polling import wait_for
from support.proxyproc import relay_config

from .test_relay_engine import engine_sessions, raw_login, rss_kb, unread_fetch_bounds_memory

HOST = "127.0.0.1"


def splice_proxy(proxy_factory, dovecot, splice_min_literal):
    config = relay_config(dovecot, allow_plaintext_auth=True)
    config["relay"] = {"engine": "epoll", "splice_min_literal": splice_min_literal}
    return proxy_factory(config)


def pipes(pid: int) -> int:
    """The pipe descriptors process `pid` holds (a session that spliced keeps its pipe)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
        except OSError:
            pass
    return count


def message(size: int, seed: int) -> bytes:
    """A message of exactly `size` bytes (at least 100): random hex lines, CRLF ends."""
    rng = random.Random(seed)
    data = bytearray(b"Subject: m%d\r\n\r\n" % seed)
    while size - len(data) > 600:
        data += rng.randbytes(rng.randint(5, 250)).hex().encode() + b"\r\n"
    data += b"x" * (size - len(data) - 2) + b"\r\n"
    assert len(data) == size
    return bytes(data)


@pytest.mark.parametrize("splice_min_literal", [64 * 1024, None], ids=["splice", "no-splice"])
def test_fetch_large_and_small_messages_byte_identical(proxy_factory, dovecot, user,
                                                       splice_min_literal):
    sizes = [300, 5_000, 40_000, 70_000, 1_000_000, 6_000_000, 900, 3_000_000]
    bodies = [message(size, seed) for seed, size in enumerate(sizes)]
    for body in bodies:
        dovecot.deliver(user[0], body)
    proxy = splice_proxy(proxy_factory, dovecot, splice_min_literal)
    before = pipes(proxy.pid)
    client = _engine_client(proxy, user)
    for _ in range(2):   # the pipe is reused by the second FETCH
        fetched = client.fetch(list(range(1, len(bodies) + 1)), ["BODY.PEEK[]"])
        got = [fetched[uid][b"BODY[]"] for uid in sorted(fetched)]
        assert [hashlib.sha256(b).hexdigest() for b in got] == \
            [hashlib.sha256(b).hexdigest() for b in bodies]
    assert client.noop()[0].startswith(b"NOOP")
    assert pipes(proxy.pid) - before == (2 if splice_min_literal else 0)
    client.logout()
    assert wait_for(lambda: pipes(proxy.pid) == before, "the session's pipe closed")


def _raw_selected(proxy, user):
    """A raw logged-in socket with a small receive buffer, INBOX selected: (socket, file)."""
    sock, file = raw_login(proxy, user)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b"s SELECT INBOX\r\n")
    while not file.readline().startswith(b"s OK"):
        pass
    return sock, file


def _engine_client(proxy, user) -> imapclient.IMAPClient:
    """A logged-in client whose session the engine runs, INBOX examined."""
    client = imapclient.IMAPClient(HOST, proxy.port("imap"), ssl=False, timeout=60)
    client.login(*user)
    assert wait_for(lambda: engine_sessions(proxy) == 1, "the session in the engine")
    client.select_folder("INBOX", readonly=True)
    return client


def test_literals_around_the_threshold(proxy_factory, dovecot, user):
    """Payloads whose rest after the first chunk is just below, at and above the threshold,
    one by one (each FETCH alone, so its literal's rest is what the first read left)."""
    threshold = 16 * 1024
    sizes = [threshold - 1, threshold, threshold + 1, threshold + 200, 2 * threshold - 1,
             2 * threshold, 2 * threshold + 1, 4 * threshold + 3, 300 * 1024 + 7]
    bodies = [message(size, 100 + seed) for seed, size in enumerate(sizes)]
    for body in bodies:
        dovecot.deliver(user[0], body)
    proxy = splice_proxy(proxy_factory, dovecot, threshold)
    before = pipes(proxy.pid)
    client = _engine_client(proxy, user)
    for seq, body in enumerate(bodies, 1):
        for item in ("BODY.PEEK[]", "BODY.PEEK[]<1.%d>" % (len(body) - 2)):
            fetched = client.fetch(str(seq), [item])
            (value,) = [v for k, v in fetched[seq].items() if k.startswith(b"BODY[")]
            expected = body if item == "BODY.PEEK[]" else body[1:len(body) - 1]
            assert hashlib.sha256(value).digest() == hashlib.sha256(expected).digest(), (seq, item)
    assert pipes(proxy.pid) - before == 2   # (the big ones were spliced)
    client.logout()


def test_slow_client_mid_splice_bounds_proxy_memory(proxy_factory, dovecot, user):
    """Backpressure while splicing: the pipe is the only buffer (1 MB at most), the upstream's
    bytes wait in the kernel; every byte arrives intact once the client reads."""
    from .test_relay_engine import deliver_big

    body = deliver_big(dovecot, user)
    proxy = splice_proxy(proxy_factory, dovecot, 64 * 1024)
    before = pipes(proxy.pid)
    sock, file = _raw_selected(proxy, user)
    unread_fetch_bounds_memory(proxy, dovecot, sock, file, body)
    assert pipes(proxy.pid) - before == 2
    sock.close()


def _dovecot_process_of(dovecot, proxy_pid: int) -> int:
    """The pid of the Dovecot process serving the proxy's one upstream connection."""
    local_inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == dovecot.imap_port and fields[3] == "01":   # ESTABLISHED
                local_inodes.add(fields[9])
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == proxy_pid:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in local_inodes:
                found.add(int(pid))
    assert len(found) == 1, found
    return found.pop()


def test_upstream_ending_mid_literal_ends_that_session_only(proxy_factory, dovecot, user):
    from .test_relay_engine import deliver_big

    deliver_big(dovecot, user)
    proxy = splice_proxy(proxy_factory, dovecot, 64 * 1024)
    before = pipes(proxy.pid)
    sock, file = _raw_selected(proxy, user)
    sock.sendall(b"f FETCH 1 BODY.PEEK[TEXT]\r\n")
    head = file.readline()
    assert head.endswith(b"}\r\n"), head
    file.read(1024 * 1024)   # the splice is under way (the client reads no more for now)
    assert wait_for(lambda: pipes(proxy.pid) - before == 2, "the session splicing")
    os.kill(_dovecot_process_of(dovecot, proxy.pid), signal.SIGKILL)
    other, other_file = raw_login(proxy, user)
    total = 1024 * 1024 + len(head)
    while chunk := file.read(1 << 20):   # the proxy closes once the upstream's end is read
        total += len(chunk)
    assert total < 40 * 1024 * 1024 + len(head)
    wait_for(lambda: "reason=upstream_closed" in proxy.logs(), "the session's end")
    assert wait_for(lambda: pipes(proxy.pid) == before, "its pipe closed")
    other.sendall(b"n NOOP\r\n")
    assert other_file.readline().startswith(b"n OK NOOP completed")
    other.close()
    sock.close()
    assert rss_kb(proxy.pid) > 0
