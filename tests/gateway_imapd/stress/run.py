"""The stateful randomized multi-session tester (issue 13): N sessions on one account, each a
thread with its own socket and `model.View` (session.py), issue a seeded random mix of APPEND,
FETCH, STORE (system flags, known and brand-new keywords, .SILENT), EXPUNGE, UID EXPUNGE, SEARCH,
the UID forms, NOOP, IDLE, pipelined groups, COPY, MOVE, mailbox visits, scratch mailboxes,
QRESYNC reconnects and STORE UNCHANGEDSINCE (steps.py), while mail is ingested from the POP3
upstream, and check every untagged response (see model.py).

Rounds: the sessions work for `round_seconds`, then meet at a barrier for a checkpoint: each
sends NOOP (everything committed is now announced), then `FETCH 1:* (UID FLAGS)`, which must
not change anything it believes (a flag change it was never told is an error); then every
session's picture must equal every other's and that of a fresh EXAMINE session (the store).

Local long runs (more seeds, sessions and time than CI):
    for i in $(seq 20); do MAILPROXY_STRESS_SESSIONS=12 MAILPROXY_STRESS_SECONDS=60 \
        .venv/bin/python -m pytest -q -p no:cacheprovider tests/gateway_imapd/test_stress.py; done
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from . import steps
from .model import Shared
from .session import READ_TIMEOUT, Keywords, Session, Target

SETTLE_POLL_S, SETTLE_BOUND_S = 0.1, 10.0   # checkpoints over several replicas (run_stress)


@dataclass
class Result:
    seed: int
    errors: list[str]
    commands: collections.Counter = field(default_factory=collections.Counter)
    checkpoints: int = 0
    seconds: float = 0.0
    work_seconds: float = 0.0                                   # without checkpoints
    timings: dict[str, list[float]] = field(default_factory=dict)   # command -> latencies

    def kinds(self) -> collections.Counter:
        """Errors by kind (their first line without numbers and session)."""
        return collections.Counter(
            re.sub(rb"\d+".decode(), "N", e.split("\n")[0].split(": ", 1)[-1])[:70]
            for e in self.errors)

    def report(self, limit: int = 25) -> str:
        head = (f"seed={self.seed} errors={len(self.errors)} checkpoints={self.checkpoints} "
                f"commands={sum(self.commands.values())} in {self.seconds:.1f}s "
                f"({dict(sorted(self.commands.items()))})")
        kinds = [f"  {n:6d} x {kind}" for kind, n in self.kinds().most_common()]
        return "\n".join([head, "errors by kind:"] + kinds + ["first errors:"] +
                         self.errors[:limit])




def run_stress(target: Target, *, sessions: int = 6, seconds: float = 20.0,
               round_seconds: float = 2.5, seed: int | None = None,
               allow_nil: bool = False, shared: Shared | None = None,
               others: tuple[Target, ...] = (),
               deliver: Callable[[bytes], None] | None = None, wide: bool = True,
               trace_dir: str | None = None,
               server_trace: Callable[[], list[bytes]] | None = None) -> Result:
    """Run the tester against `target`; never raises for server behaviour (see Result.errors).
    `allow_nil`: tolerate RFC 2180 4.1.2 (NIL data for messages expunged elsewhere, model.py).
    `shared`: the `Shared` of an earlier run on the same account (its appended bodies).
    `others`: more servers on the same mailbox (gateway replicas): sessions are spread over all
    of them by pairs; as a change reaches another replica a moment later (its change feed), a
    checkpoint whose pictures differ is settled again, every `SETTLE_POLL_S`, for at most
    `SETTLE_BOUND_S`, before the difference counts as an error.
    `deliver`: puts a message into the account's POP3 upstream; session 0 calls it as one of
    its steps, so mail is ingested during everything else (checkpoints settle as with `others`:
    a login or a poll may ingest between two pictures).
    `wide`: the whole mix (steps.py: mailboxes, COPY/MOVE, QRESYNC sessions, ingest); False: the
    core mix of APPEND, FETCH, STORE, EXPUNGE, SEARCH, NOOP, IDLE and pipelines only.
    `trace_dir`: at the run's first error (a failing check or checkpoint), each session's last
    lines sent and received (with `time.monotonic()` stamps) are written there as SEED-sN.txt,
    and `server_trace()` (the gateway's side, server_trace.py) as SEED-server.txt, for finding
    the interleaving."""
    targets = (target, *others)
    seed = random.randrange(1 << 32) if seed is None else seed
    if shared is None:
        shared = Shared()
    else:   # a later run on the same account: what earlier runs appended is known, not their errors
        shared.errors = []
    keywords = Keywords(shared, seed)
    counts: collections.Counter = collections.Counter()
    rounds = max(1, round(seconds / round_seconds))
    barrier = threading.Barrier(sessions, timeout=READ_TIMEOUT * 4)
    pictures: dict[int, list] = {}
    agreed = [False]
    result = Result(seed, shared.errors, counts)
    if trace_dir:
        shared.on_first_error = lambda: _write_traces(trace_dir, seed, shared, server_trace)
    timings: dict[str, list[float]] = collections.defaultdict(list)
    started = time.monotonic()

    def worker(sid: int) -> None:
        rng = random.Random(seed * 1000 + sid)
        session = Session(sid, targets[(sid // 2) % len(targets)], shared, rng, sid % 2 == 1,
                          keywords, counts, allow_nil, qresync=wide and sid % 4 == 3)
        session.deliver = deliver if sid == 0 else None
        session.replicas = bool(others)
        session.wide = wide
        try:
            session.open()
            steps.prepare(session)
            barrier.wait()
            for round_no in range(rounds):
                deadline = time.monotonic() + round_seconds
                session.timings = timings
                while time.monotonic() < deadline:
                    session.step()
                session.timings = None
                barrier.wait()
                attempts = 1 if not (others or deliver) else int(SETTLE_BOUND_S / SETTLE_POLL_S)
                for attempt in range(attempts):
                    pictures[sid] = session.settle(strict=attempt == attempts - 1)
                    barrier.wait()
                    if sid == 0:
                        last = attempt == attempts - 1
                        agreed[0] = _compare(target, shared, pictures, round_no, record=last)
                        if agreed[0] or last:
                            result.checkpoints += 1
                    barrier.wait()
                    if agreed[0]:
                        break
                    time.sleep(SETTLE_POLL_S)   # a bounded poll: the other replica catches up
        except threading.BrokenBarrierError:
            pass
        except Exception:   # a crash of the tester or a dead server: the run ends with it
            shared.error(f"session {sid}: {traceback.format_exc(limit=4)}")
            barrier.abort()
        finally:
            session.close()

    threads = [threading.Thread(target=worker, args=(sid,), daemon=True) for sid in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    result.timings = dict(timings)
    result.work_seconds = rounds * round_seconds
    return result


def _write_traces(trace_dir: str, seed: int, shared: Shared,
                  server_trace: Callable[[], list[bytes]] | None) -> None:
    """Each session's trace and the gateway's, as they are now (the first error's moment),
    in `trace_dir` (made if missing: a failed open here was the run's second error and hid
    the first's traces)."""
    os.makedirs(trace_dir, exist_ok=True)
    traces = dict(server=server_trace() if server_trace is not None else [])
    for sid, lines in list(shared.traces.items()):
        while True:   # the other sessions' threads may append meanwhile
            try:
                traces[f"s{sid}"] = list(lines)
                break
            except RuntimeError:
                continue
    for name, lines in traces.items():
        if lines:
            with open(os.path.join(trace_dir, f"{seed}-{name}.txt"), "wb") as out:
                out.write(b"\n".join(lines) + b"\n")


def _compare(target: Target, shared: Shared, pictures: dict[int, list], round_no: int,
             record: bool = True) -> bool:
    """Every session's picture against a fresh EXAMINE; True when all agree. Differences are
    recorded as errors only with `record`."""
    own = Shared()
    fresh = Session(-1, target, own, random.Random(0), False, None, collections.Counter())
    try:
        fresh.open(b"EXAMINE")
        truth = fresh.settle()
    finally:
        fresh.close()
    for error in own.errors:
        shared.error(f"checkpoint {round_no}, fresh EXAMINE: {error}")
    agreed = all(picture == truth for picture in pictures.values())
    for sid, picture in sorted(pictures.items()):
        if picture != truth and record:
            diff = [(n, a, b) for n, (a, b) in enumerate(itertools.zip_longest(picture, truth), 1)
                    if a != b][:3]
            shared.error(f"checkpoint {round_no}: session {sid} has {len(picture)} messages, "
                         f"the store {len(truth)}; first differences (seq, session, store): {diff}")
    return agreed


__all__ = ["Target", "Result", "run_stress", "SETTLE_POLL_S", "SETTLE_BOUND_S"]
