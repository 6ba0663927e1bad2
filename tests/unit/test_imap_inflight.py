"""The IMAP relay's commands in flight (proxy/relay/imap_inflight.py): what is owed an answer,
IDLE, the line read raw after IDLE, completion metrics and what is counted at the end."""

from __future__ import annotations

from proxy.relay.imap_inflight import InFlight


class _Counter:
    def __init__(self, seen: list, labels: tuple) -> None:
        self.seen, self.key = seen, labels

    def inc(self) -> None:
        self.seen.append(self.key)


class _Commands:
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def labels(self, *labels: str) -> _Counter:
        return _Counter(self.seen, labels)


class _Meter:
    """Records completions as CommandMeter.completed receives them."""

    def __init__(self) -> None:
        self.completed_with: list[tuple[str, bytes]] = []
        self.metrics = type("M", (), {"commands": _Commands()})()

    def completed(self, name: str, status: bytes, started: float) -> None:
        self.completed_with.append((name, status))


def test_owed_ignores_a_running_idle_and_completion_meters_once() -> None:
    meter = _Meter()
    flight = InFlight(meter)  # type: ignore[arg-type]
    assert not flight.owed()
    flight.start(b"a1", "IDLE")
    flight.idle_tag = b"a1"
    assert not flight.owed()            # IDLE owes nothing until DONE
    flight.start(b"a2", "NOOP")
    assert flight.owed()
    flight.complete(b"a2", b"OK")
    flight.complete(b"a2", b"OK")       # a second tagged reply with that tag: counted once
    assert not flight.owed() and meter.completed_with == [("NOOP", b"OK")]
    assert flight.idle_tag == b"a1"     # OK to another tag leaves IDLE running


def test_refused_idle_makes_the_next_raw_line_a_command() -> None:
    meter = _Meter()
    flight = InFlight(meter)  # type: ignore[arg-type]
    flight.start(b"i", "IDLE")
    flight.idle_tag = b"i"
    flight.complete(b"i", b"BAD")
    assert flight.idle_tag is None and meter.completed_with == [("IDLE", b"BAD")]
    assert flight.raw_line(b"x7 uid fetch 1:* (FLAGS)") == (b"x7", "UID FETCH")
    assert flight.raw_line(b"x8 noop") == (b"x8", "NOOP")
    assert flight.raw_line(b"garbage") is None


def test_done_ends_idle_and_is_no_command() -> None:
    flight = InFlight(_Meter())  # type: ignore[arg-type]
    flight.idle_tag = b"i"
    assert flight.raw_line(b" done ") is None
    assert flight.idle_tag is None
    assert flight.raw_line(b"a3 DONE") == (b"a3", "other")   # no IDLE running: a command


def test_settle_counts_the_unanswered_as_none() -> None:
    meter = _Meter()
    flight = InFlight(meter)  # type: ignore[arg-type]
    flight.start(b"a", "SELECT")
    flight.start(b"b", "FETCH")
    flight.settle()
    assert sorted(meter.metrics.commands.seen) == [("imap", "FETCH", "none"),
                                                   ("imap", "SELECT", "none")]
    assert not flight.pending
