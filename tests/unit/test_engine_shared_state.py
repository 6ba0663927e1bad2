"""What the relay engine's thread shares with trio's (proxy/relay/engine_login.py): the auth
throttle (proxy/net/throttle.py), read and cleared from both, holds one lock, so a `clean` asked
while a failure is being recorded sees it recorded (without the lock it said "clean" and a
client blocked a moment earlier got one login through); the known-greetings table
(proxy/session/early_login.py) is an immutable snapshot swapped whole, so a reader never sees
it change under it."""

from __future__ import annotations

import threading

import pytest

from proxy.config import AuthThrottle
from proxy.net.throttle import Throttle
from proxy.session.early_login import MAX_KNOWN_GREETINGS, KnownGreetings

IP, USER = "192.0.2.7", "alice"


def test_clean_asked_during_a_failure_waits_for_it() -> None:
    """The throttle's clock is read inside `failure`, before the records change: the engine's
    thread asks `clean` right then. It must answer after the failure, with False."""
    answers: list[bool] = []
    asking = threading.Event()
    other: list[threading.Thread] = []

    def ask() -> None:
        asking.set()
        answers.append(throttle.clean(IP, USER))

    def clock() -> float:
        if not other:
            thread = threading.Thread(target=ask)
            other.append(thread)
            thread.start()
            assert asking.wait(10)
            thread.join(0.5)   # without the lock it answers now, before the failure is kept
        return 1000.0

    throttle = Throttle(AuthThrottle(), clock)
    throttle.failure(IP, USER)
    other[0].join(10)
    assert answers == [False]
    assert not throttle.clean(IP, USER)
    throttle.success(USER, IP)
    assert not throttle.clean(IP, USER)   # the IP's record stays (only the user's are cleared)
    assert throttle.clean("198.51.100.1", USER)


def test_a_known_greetings_snapshot_never_changes() -> None:
    known = KnownGreetings()
    before = known.snapshot()
    known.learnt("imap", "main", (b"IMAP4rev1", b"IDLE"))
    after = known.snapshot()
    assert dict(before) == {} and after is not before
    assert dict(after) == {("imap", "main"): (b"IMAP4rev1", b"IDLE")}
    known.learnt("imap", "main", (b"IMAP4rev1", b"IDLE"))
    assert known.snapshot() is after   # nothing new learnt: nothing swapped
    known.refused("imap", "main", "no greeting")
    assert dict(after) == {("imap", "main"): (b"IMAP4rev1", b"IDLE")}
    assert known.early("imap", "main") == ()
    known.learnt("imap", "main", (b"IMAP4rev1",))   # turned off stays off until a reload
    assert known.early("imap", "main") == ()
    with pytest.raises(TypeError):
        after[("imap", "x")] = ()  # type: ignore[index]


def test_known_greetings_stay_bounded() -> None:
    known = KnownGreetings()
    for i in range(MAX_KNOWN_GREETINGS):
        known.learnt("imap", f"u{i}", (b"IMAP4rev1",))
    assert len(known.snapshot()) == MAX_KNOWN_GREETINGS
    known.learnt("imap", "one more", (b"IMAP4rev1",))
    assert dict(known.snapshot()) == {("imap", "one more"): (b"IMAP4rev1",)}


def test_learning_from_two_threads_keeps_every_upstream() -> None:
    known = KnownGreetings()
    names = [[f"t{t}-{i}" for i in range(200)] for t in range(4)]

    def learn(mine: list[str]) -> None:
        for name in mine:
            known.learnt("imap", name, (b"IMAP4rev1",))

    threads = [threading.Thread(target=learn, args=(mine,)) for mine in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(known.snapshot()) == 800
