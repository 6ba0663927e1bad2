"""Implicit-TLS handshake steps on the relay engine's handshake threads
(proxy/relay/tls_handshake_pool.py, engine_tls_accept.py): a handshake stalled inside OpenSSL
does not hold up another session's relayed command, a drain ends a handshake still queued, and
a full queue is answered by running the step in the engine's thread.

A real Engine with its thread, real sockets and real TLS (trustme); the sessions are small
fakes of one layer (an echo standing for a relayed session, a Session with the fields the
handshake reads). A handshake is stalled by the server context's SNI callback, which runs
inside `SSLObject.do_handshake` and waits on a threading.Event for the name "stall.example":
the order of events is the test, never a duration."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import types
from typing import Callable

import pytest
import trio
import trustme

from proxy import config as config_mod
from proxy.net.conn import Conn
from proxy.net.tls_engine import TLSEngine
from proxy.relay.engine import Engine
from proxy.relay.engine_entry import engine
from proxy.relay.engine_session import EngineSession, Side
from proxy.relay.engine_tls_accept import TLSAccept
from proxy.relay.tls_handshake_pool import HandshakePool
from proxy.session.failures import Close
from support.configs import ONE_IMAP_RELAY
from support.polling import wait_for

STALL = "stall.example"


class _Count:
    def labels(self, *_: str) -> _Count:
        return self

    def inc(self) -> None:
        pass

    def dec(self) -> None:
        pass


def _session() -> types.SimpleNamespace:
    metrics = types.SimpleNamespace(relay_engine_sessions=_Count(), tls_handshakes=_Count())
    listener = types.SimpleNamespace(name="imaps", protocol="imap",
                                     timeouts=types.SimpleNamespace(login=3600.0))
    return types.SimpleNamespace(runtime=types.SimpleNamespace(metrics=metrics),
                                 listener=listener, close_reason=None, tls=False,
                                 log_fields=dict)


class Echo(EngineSession):
    """Stands for a relayed session: answers each chunk with "OK " and the chunk (over TLS
    once its side has a TLSEngine)."""

    def __init__(self, engine: Engine, conn: Conn, fd: int):
        super().__init__(engine, _session(), conn, fd, None, -1)  # type: ignore[arg-type]

    def received(self, side: Side, data: bytes) -> None:
        if data:
            self.send(self.client, b"OK " + data)
        else:
            self.finish()


class Harness:
    """An engine with `threads` handshake threads (queue `bound`), a server context whose SNI
    callback stalls "stall.example" until `gate` is set, and sessions adopted into it."""

    def __init__(self, threads: int, bound: int):
        self.ca = trustme.CA()
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("localhost", STALL).configure_cert(self.server)
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ca.configure_trust(self.client)
        self.stalled, self.gate = threading.Event(), threading.Event()
        self.server.sni_callback = self._sni
        self.engine = Engine()
        self.engine.handshakes = HandshakePool(threads, bound) if threads else None
        self.engine._start()
        self.keep: list[socket.socket] = []

    def _sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name == STALL:
            self.stalled.set()
            self.gate.wait()

    def _pair(self) -> tuple[socket.socket, socket.socket, trio.SocketStream]:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        self.keep += [ours, theirs]
        return ours, theirs, trio.SocketStream(trio.socket.from_stdlib_socket(ours))

    def locked(self, act: Callable[..., None], *args: object) -> None:
        """`act(*args)` under the engine's lock, as trio's thread takes it (with a bound only a
        broken build reaches: a step stalled in the engine's thread keeps the lock)."""
        lock = self.engine._lock
        assert lock.acquire(timeout=60), "the engine's thread never let go of its lock"
        try:
            self.engine.now = self.engine.clock()
            act(*args)
        finally:
            lock.release()

    def _adopt(self, sess: EngineSession) -> None:
        self.locked(self.engine.adopt, sess)

    def echo(self) -> socket.socket:
        """A plain session in the engine; returns its client's socket."""
        ours, theirs, stream = self._pair()
        self._adopt(Echo(self.engine, Conn(stream), ours.fileno()))
        return theirs

    def tls(self) -> tuple[TLSAccept, socket.socket]:
        """An implicit-TLS client's handshake in the engine (an Echo once done)."""
        ours, theirs, stream = self._pair()
        conn, fd = Conn(stream), ours.fileno()
        accept = TLSAccept(self.engine, _session(), conn, stream, fd,  # type: ignore[arg-type]
                           TLSEngine.server(self.server), lambda: Echo(self.engine, conn, fd))
        self._adopt(accept)
        return accept, theirs

    def held_pool(self) -> tuple[HandshakePool, Callable[[], ssl.SSLSocket],
                                 TLSAccept, socket.socket]:
        """The pool, its one thread held by a first handshake stalled inside OpenSSL (`finished`
        for that client once `gate` is set), and a second session whose step is queued behind
        it (its client has sent its hello)."""
        pool = self.engine.handshakes
        assert pool is not None
        _, first = self.tls()
        finished = self.handshake_in_thread(first, STALL)
        wait_for(self.stalled.is_set, what="the first handshake stalled")
        queued, client = self.tls()
        client.sendall(hello(self.client, "localhost"))
        wait_for(lambda: pool.queued == 1, what="the second handshake's step queued")
        return pool, finished, queued, client

    def handshake_in_thread(self, sock: socket.socket, name: str) -> Callable[[], ssl.SSLSocket]:
        """A blocking client handshake on a thread of its own; the result waits for it."""
        done: list[ssl.SSLSocket | BaseException] = []

        def run() -> None:
            try:
                done.append(self.client.wrap_socket(sock, server_hostname=name))
            except BaseException as exc:  # noqa: BLE001 - raised in the test's thread
                done.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def result() -> ssl.SSLSocket:
            thread.join(60)
            assert done, "the client's handshake never ended"
            if isinstance(done[0], BaseException):
                raise done[0]
            return done[0]
        return result


def hello(ctx: ssl.SSLContext, name: str) -> bytes:
    """A client's ClientHello, as it would go on the wire."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def noop(sock: socket.socket) -> bytes:
    sock.settimeout(60)   # (a bound only a broken build reaches: the engine never answered)
    sock.sendall(b"a NOOP\r\n")
    return sock.recv(4096)


def run(test: Callable[[Harness], None], threads: int, bound: int) -> None:
    """`test(harness)` in a trio run (the engine's); the gate opens at the end whatever
    happened, so a failing test never leaves a thread stalled (the run's end waits for it)."""
    async def main() -> None:
        harness = Harness(threads, bound)
        try:
            test(harness)
        finally:
            harness.gate.set()
            for sock in harness.keep:
                sock.close()
    trio.run(main)


def test_a_stalled_handshake_does_not_hold_up_a_relayed_command():
    def test(h: Harness) -> None:
        plain = h.echo()
        accept, client = h.tls()
        finished = h.handshake_in_thread(client, STALL)
        wait_for(h.stalled.is_set, what="the handshake stalled inside OpenSSL")
        assert noop(plain) == b"OK a NOOP\r\n"   # answered while the handshake is stalled
        assert not h.gate.is_set()
        h.gate.set()
        tls = finished()
        tls.sendall(b"after\r\n")
        assert tls.recv(4096) == b"OK after\r\n"   # the handshake went on to the session
        assert accept.done and accept.session.close_reason is None
    run(test, threads=1, bound=8)


def test_a_drain_ends_a_handshake_still_queued():
    def test(h: Harness) -> None:
        pool, finished, queued, client = h.held_pool()
        h.locked(h.engine.step, queued, queued.drained)
        assert queued.done and queued.session.close_reason == Close.SHUTDOWN
        h.gate.set()
        finished()
        wait_for(lambda: pool.settled, what="the pool idle again")
        assert queued.busy and not queued.tls.handshake_done   # (never advanced)
        client.setblocking(False)
        with pytest.raises(BlockingIOError):   # its step was skipped: no ServerHello written
            client.recv(4096)
    run(test, threads=1, bound=8)


def test_a_reset_during_a_step_ends_the_handshake_at_once():
    def test(h: Harness) -> None:
        accept, client = h.tls()
        client.sendall(hello(h.client, STALL))
        wait_for(h.stalled.is_set, what="the handshake stalled inside OpenSSL")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()   # a reset: its hang-up is reported whatever the mask
        wait_for(lambda: accept.done, what="the handshake ended by the reset")
        assert accept.session.close_reason == Close.TLS_HANDSHAKE_FAILED
        assert not h.gate.is_set()   # (ended while its step was still stalled)
    run(test, threads=1, bound=8)


def test_a_bug_in_a_step_on_a_handshake_thread_ends_its_session_at_once(monkeypatch):
    """A step that raises on a handshake thread (a bug: the handshake's own failures are
    SSLError) ends its session in the engine's thread as a bug in any step does (`_guarded`:
    INTERNAL_ERROR, logged with the session's fields), rather than leaving it busy, its client
    unread, until the login timeout."""
    advance = TLSAccept._advance

    def broken(self: TLSAccept, data: bytes) -> tuple[bool, str | None, bytes]:
        if threading.current_thread().name.startswith("tls-handshake-"):
            raise RuntimeError("a bug in a handshake step")
        return advance(self, data)
    monkeypatch.setattr(TLSAccept, "_advance", broken)

    def test(h: Harness) -> None:
        accept, client = h.tls()
        client.sendall(hello(h.client, "localhost"))
        wait_for(lambda: accept.done, what="the session ended by its step's bug")
        assert accept.session.close_reason == Close.INTERNAL_ERROR
    run(test, threads=1, bound=8)


def test_a_full_queue_runs_the_step_in_the_engines_thread():
    def test(h: Harness) -> None:
        pool, first_done, waiting, _ = h.held_pool()
        assert pool.queued == pool.bound
        third, client = h.tls()   # no room: its steps run in the engine's thread
        tls = h.handshake_in_thread(client, "localhost")()
        tls.sendall(b"third\r\n")
        assert tls.recv(4096) == b"OK third\r\n"
        assert not h.gate.is_set() and waiting.busy   # (the first still stalled, the second queued)
        assert third.done and third.session.close_reason is None
        h.gate.set()
        first_done()
    run(test, threads=1, bound=1)


def test_the_pool_starts_threads_on_demand_and_lets_idle_ones_go():
    pool = HandshakePool(2, bound=4, idle_exit=0.01)
    ran: list[str] = []
    gate = threading.Event()
    assert pool.submit(lambda: (gate.wait(), ran.append(threading.current_thread().name)))
    assert pool.submit(lambda: ran.append(threading.current_thread().name))
    wait_for(lambda: len(ran) == 1, what="the second job on a second thread")
    assert pool.running <= 2 and ran[0].startswith("tls-handshake-")
    gate.set()
    wait_for(lambda: pool.running == 0, what="idle threads gone")
    assert len(ran) == 2
    smaller = HandshakePool(2, bound=4, idle_exit=3600)   # (a reload makes it smaller)
    hold = threading.Event()
    assert smaller.submit(hold.wait) and smaller.submit(hold.wait)
    wait_for(lambda: smaller.running == 2 and not smaller.queued, what="two threads in a job")
    hold.set()
    wait_for(lambda: smaller.settled, what="the jobs done")
    smaller.size = 1
    assert smaller.submit(lambda: None)   # the thread woken for it leaves, the other takes it
    wait_for(lambda: smaller.running == 1 and smaller.settled, what="the thread above gone")
    with pytest.raises(ValueError):
        HandshakePool(-1)


def test_a_reload_to_no_thread_still_runs_the_steps_queued():
    """relay.tls_handshake_threads reloaded to 0 while steps wait in the queue: the threads
    leave only once it is empty (each step's session waits for its result, busy, its client
    unread: a step left there would hold its session until the login timeout), and a later
    submit is refused, so its caller (the engine's thread) runs that step itself."""
    pool = HandshakePool(2, bound=4, idle_exit=3600)
    gate = threading.Event()
    ran: list[str] = []
    assert pool.submit(lambda: (gate.wait(), ran.append("first")))
    assert pool.submit(lambda: (gate.wait(), ran.append("second")))
    wait_for(lambda: pool.running == 2 and not pool.queued, what="both threads in a job")
    assert pool.submit(lambda: ran.append("queued"))
    pool.size = 0   # (a reload)
    gate.set()
    wait_for(lambda: pool.running == 0, what="the threads gone")
    assert sorted(ran) == ["first", "queued", "second"]
    assert not pool.submit(lambda: ran.append("later")) and not pool.queued


def test_a_thread_that_could_not_start_is_not_counted(monkeypatch):
    """A handshake thread that cannot start (RuntimeError: a pids limit, out of memory) fails
    that submit, and is not counted as running: the next submit starts one, which runs what
    was queued. Counted, it left a pool of one thread with none, every step queued for ever
    and then, the queue full, every handshake back in the engine's thread."""
    pool = HandshakePool(1, bound=4, idle_exit=0.01)
    start = threading.Thread.start

    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Thread, "start", refused)
    ran: list[str] = []
    with pytest.raises(RuntimeError):
        pool.submit(lambda: ran.append("first"))
    assert pool.running == 0
    monkeypatch.setattr(threading.Thread, "start", start)
    assert pool.submit(lambda: ran.append("second"))
    wait_for(lambda: len(ran) == 2, what="both jobs run by the thread started second")
    assert ran == ["first", "second"]   # (in the engine, the first one's session has ended)


BASE = ONE_IMAP_RELAY


def test_the_setting_sizes_the_engines_pool_and_follows_a_reload():
    assert config_mod.loads(BASE).relay.tls_handshake_threads == 1
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.loads(BASE + "relay: {tls_handshake_threads: 65}\n")
    assert caught.value.errors[0].endswith("expected 0 (the engine's own thread) to 64 threads")

    async def main() -> None:
        made = engine(config_mod.loads(BASE + "relay: {tls_handshake_threads: 2}\n").relay)
        pool = made.handshakes
        assert pool is not None and pool.size == 2
        for threads in (0, 2, 1):   # (a reload: old and new sessions alternate) one pool, resized
            assert engine(config_mod.loads(
                BASE + f"relay: {{tls_handshake_threads: {threads}}}\n").relay) is made
            assert made.handshakes is pool and pool.size == threads
    trio.run(main)
