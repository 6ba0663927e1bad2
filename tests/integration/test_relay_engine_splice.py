"""Literal payloads spliced by the relay engine (`relay.splice_min_literal`,
proxy/relay/engine_splice.py) against a real Dovecot with real clients: FETCH of large and small
messages byte-identical with splice on and off (and that splicing really happened:
mailproxy_relay_spliced_bytes_total), literals around the threshold, a client that stops
reading mid-literal (the proxy's memory stays bounded), sessions that spliced holding no pipe
once their literal is through (the engine keeps one, empty, for the next), and the upstream
ending mid-literal: Dovecot killed, and a scripted upstream reset while the pipe holds bytes
(the client gets every byte the upstream sent)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import signal
import socket
import struct
import termios
import threading

import imapclient
import pytest

from support.polling import wait_for
from support.proxyproc import relay_config

from . import fake_upstream
from .test_relay_engine import engine_sessions, raw_login, rss_kb, unread_fetch_bounds_memory
from .test_relay_engine_login import metric

HOST = "127.0.0.1"
RECEIVE_SIZE = 256 * 1024   # the engine's read: at most that much of a payload is not spliced


def splice_proxy(proxy_factory, dovecot, splice_min_literal):
    config = relay_config(dovecot, allow_plaintext_auth=True)
    config["relay"] = {"engine": "epoll", "splice_min_literal": splice_min_literal}
    return proxy_factory(config)


def spliced(proxy) -> float:
    return metric(proxy, "mailproxy_relay_spliced_bytes_total")


def pipes(pid: int) -> int:
    """The pipe descriptors process `pid` holds (2 per pipe: a splicing session's, the engine's
    pool of empty ones)."""
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
    for _ in range(2):   # the pooled pipe is reused by the second FETCH
        fetched = client.fetch(list(range(1, len(bodies) + 1)), ["BODY.PEEK[]"])
        got = [fetched[uid][b"BODY[]"] for uid in sorted(fetched)]
        assert [hashlib.sha256(b).hexdigest() for b in got] == \
            [hashlib.sha256(b).hexdigest() for b in bodies]
    assert client.noop()[0].startswith(b"NOOP")
    if splice_min_literal:   # each big payload spliced but for its first read, at most
        assert 2 * sum(size - RECEIVE_SIZE for size in sizes if size > RECEIVE_SIZE) \
            <= spliced(proxy) <= 2 * sum(size for size in sizes if size >= splice_min_literal)
    else:
        assert spliced(proxy) == 0
    # the pipe went back to the engine at each literal's end: one pipe, empty, in its pool
    assert pipes(proxy.pid) - before == (2 if splice_min_literal else 0)
    client.logout()


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
    assert (300 * 1024 + 7) - RECEIVE_SIZE <= spliced(proxy) <= 2 * sum(sizes)
    assert pipes(proxy.pid) - before == 2   # (the pool's one: each splice gave it back)
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
    assert len(body) - RECEIVE_SIZE <= spliced(proxy) <= len(body)
    assert pipes(proxy.pid) - before == 2   # (in the pool)
    sock.close()


def test_sessions_that_spliced_hold_no_pipe(proxy_factory, dovecot, user):
    """Review (medium): a session that once spliced kept its pipe for its whole life, so a
    non-root process ran out of its pipe budget (fs.pipe-user-pages-soft: 64 pipes of 1 MB).
    Now three idle sessions that each spliced a literal hold none; the engine keeps one pipe,
    empty, that each took in turn."""
    body = message(1_000_000, 7)
    dovecot.deliver(user[0], body)
    proxy = splice_proxy(proxy_factory, dovecot, 64 * 1024)
    before = pipes(proxy.pid)
    clients = []
    for n in range(3):
        client = imapclient.IMAPClient(HOST, proxy.port("imap"), ssl=False, timeout=60)
        client.login(*user)
        assert wait_for(lambda n=n: engine_sessions(proxy) == n + 1, "the session in the engine")
        client.select_folder("INBOX", readonly=True)
        assert client.fetch("1", ["BODY.PEEK[]"])[1][b"BODY[]"] == body
        clients.append(client)
    assert 3 * (len(body) - RECEIVE_SIZE) <= spliced(proxy) <= 3 * len(body)
    assert pipes(proxy.pid) - before == 2
    for client in clients:
        assert client.noop()[0].startswith(b"NOOP")
        client.logout()


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
    assert pipes(proxy.pid) - before == 2   # its pipe, emptied, back in the engine's pool
    other.sendall(b"n NOOP\r\n")
    assert other_file.readline().startswith(b"n OK NOOP completed")
    other.close()
    sock.close()
    assert rss_kb(proxy.pid) > 0


PAYLOAD_BLOCK = b"".join(b"%06d reset mid-splice payload line\r\n" % n for n in range(1600))


def _fetch_then_reset(sent: dict[str, int], reset: threading.Event):
    """A fake upstream that logs the proxy in, answers a FETCH with a 64 MB literal's first
    megabytes, as many as the kernels take, and once the proxy stopped reading (its receive
    window closed: the persist timer's probes, TCP_INFO), resets the connection: `sent` gets
    how many payload bytes had reached the proxy's kernel (those taken by ours, less those
    still queued here)."""

    def script(conn: fake_upstream.FakeConn) -> None:
        if not fake_upstream.imap_logged_in(conn):   # (the health check)
            return
        line = conn.readline()
        assert line.endswith(b" FETCH 1 BODY.PEEK[]\r\n"), line
        conn.send(b"* 1 FETCH (BODY[] {%d}\r\n" % (64 * 1024 * 1024))
        sock = conn.sock
        sock.setblocking(False)
        taken = 0
        while True:
            try:
                # (after a partial send, the rest of that block: the stream stays the blocks
                # end to end, as `expected` has it)
                taken += sock.send(PAYLOAD_BLOCK[taken % len(PAYLOAD_BLOCK):])
            except BlockingIOError:
                if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[3]:   # tcpi_probes
                    break
                wait_for(lambda: _writable_or_probed(sock), "the proxy's window closed")
        queued = struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]
        sent["payload"] = taken - queued
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.set()   # (FakeUpstream closes the socket: with SO_LINGER 0, a reset)

    return fake_upstream.FakeUpstream(script)


def _writable_or_probed(sock: socket.socket) -> bool:
    import select

    return bool(select.select([], [sock], [], 0)[1]) or bool(
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[3])


def test_upstream_reset_mid_splice_delivers_what_it_sent(proxy_factory, dovecot):
    """Review (low): an upstream reset while the pipe held bytes for a client that was not
    reading dropped them (and what the kernel still held). Now the client gets every byte the
    upstream sent before its reset, then the session ends as after a plain read."""
    sent: dict[str, int] = {}
    reset = threading.Event()
    fake = _fetch_then_reset(sent, reset)
    try:
        config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
        config["upstreams"]["main"]["imap"] = {"port": fake.port, "tls": "none"}
        config["relay"] = {"engine": "epoll", "splice_min_literal": 64 * 1024}
        proxy = proxy_factory(config)
        assert fake.wait_connection() == b""   # the health check
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(30)
        sock.connect((HOST, proxy.port("imap")))
        file = sock.makefile("rb")
        file.readline()
        sock.sendall(b'a LOGIN "user@example.com" "pw"\r\n')
        assert file.readline().startswith(b"a OK")
        sock.sendall(b"f FETCH 1 BODY.PEEK[]\r\n")
        assert wait_for(reset.is_set, "the upstream's reset", timeout=30)
        fake.wait_connection()
        head = file.readline()
        assert head == b"* 1 FETCH (BODY[] {%d}\r\n" % (64 * 1024 * 1024)
        got = bytearray()
        while chunk := file.read1(1 << 20):
            got += chunk
        expected = (PAYLOAD_BLOCK * (sent["payload"] // len(PAYLOAD_BLOCK) + 1))[:sent["payload"]]
        assert len(got) == sent["payload"] and got == expected
        assert spliced(proxy) > 0   # (the path under test: the literal was being spliced)
        wait_for(lambda: "reason=upstream_closed" in proxy.logs(), "the session's end")
        sock.close()
    finally:
        fake.close()
