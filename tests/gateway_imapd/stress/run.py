"""The stateful randomized multi-session tester (issue 13): N sessions on one account, each a
thread with its own socket and `model.View`, issue a seeded random mix of APPEND, FETCH, STORE
(system flags, known and brand-new keywords, .SILENT), EXPUNGE, UID EXPUNGE, SEARCH, the UID
forms, NOOP, IDLE and pipelined groups, and check every untagged response (see model.py).

Rounds: the sessions work for `round_seconds`, then meet at a barrier for a checkpoint: each
sends NOOP (everything committed is now announced), then `FETCH 1:* (UID FLAGS)`, which must
not change anything it believes (a flag change it was never told is an error); then every
session's picture must equal every other's and that of a fresh EXAMINE session (the store).

Pipelining follows RFC 3501 5.5: sequence-number commands are only pipelined behind commands
that cannot expunge (non-UID FETCH/STORE/SEARCH); the rest of a group uses UIDs or NOOP.
"""

from __future__ import annotations

import collections
import itertools
import random
import re
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field

from .model import Shared, View
from .wire import Conn, WireError, tokens

APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]")
READ_TIMEOUT = 30.0            # a server silent this long is hung: an error, not a wait
SETTLE_POLL_S, SETTLE_BOUND_S = 0.1, 10.0   # checkpoints over several replicas (run_stress)
SYSTEM = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft"]
LABELS = ["$Label1", "$Label2", "$Label3", "$Forwarded"]
MAX_NEW_KEYWORDS = 40
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    password: str


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


class StressError(Exception):
    pass


class Session:
    """One client connection and its model (see the module docstring)."""

    def __init__(self, sid: int, target: Target, shared: Shared, rng: random.Random,
                 condstore: bool, keywords: "Keywords", counts: collections.Counter,
                 allow_nil: bool = False):
        self.sid, self.target, self.shared, self.rng = sid, target, shared, rng
        self.condstore, self.keywords, self.counts = condstore, keywords, counts
        self.view = View(sid, shared, allow_nil)
        self.timings: dict[str, list[float]] | None = None   # command -> seconds (benchmarks)
        self.tags = (b"s%dt%d" % (sid, n) for n in itertools.count(1))
        self.conn: Conn | None = None
        self._last_token: bytes | None = None
        self._silent: list[tuple[bytes, bool, list]] = []   # STORE .SILENT targets of the group

    # ---- the wire ---------------------------------------------------------------------------
    def open(self, select: bytes = b"SELECT") -> None:
        self.conn = Conn(self.target.host, self.target.port, READ_TIMEOUT)
        greeting = self.conn.response()
        if not greeting.startswith(b"* OK"):
            raise StressError(f"greeting {greeting!r}")
        self.ok(b'LOGIN "%s" "%s"' % (self.target.user.encode(), self.target.password.encode()))
        if self.condstore:
            self.ok(b"ENABLE CONDSTORE")
        self.ok(select + b" INBOX")
        self.sync()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.run([b"LOGOUT"])
            except (OSError, WireError, StressError):
                pass
            self.conn.close()

    def run(self, commands: list[bytes]) -> list[bytes]:
        """Send `commands` pipelined; handle every response; the tagged responses, in order."""
        pending = collections.deque()
        out = b""
        sent = time.perf_counter()
        for command in commands:
            tag = next(self.tags)
            pending.append((tag, tag + b" " + command, sent))
            out += tag + b" " + command + b"\r\n"
        self.conn.send(out)
        done = []
        while pending:
            done.append(self._until_tagged(pending))
        silent, self._silent = self._silent, []
        for target, uid, slots in silent:   # after the group: a FETCH in it may have run before
            self._forget(target, uid, slots)
        return done

    def _until_tagged(self, pending: collections.deque) -> bytes:
        """Responses up to the next tagged one (pipelined commands may complete in any order,
        RFC 3501 5.5)."""
        while True:
            line = self.conn.response()
            if line.startswith(b"* "):
                self._untagged(line, [entry[1] for entry in pending])
            elif line.startswith(b"+"):
                raise StressError(f"unexpected continuation {line!r} during {pending!r}")
            else:
                tag = line.split(b" ", 1)[0]
                for entry in pending:
                    if entry[0] == tag:
                        pending.remove(entry)
                        self._tagged(line, entry[1])
                        if entry[2] is not None and self.timings is not None:
                            self.timings[verb(entry[1])].append(time.perf_counter() - entry[2])
                        return line
                raise StressError(f"tagged response {line!r} for no pending command")

    def _untagged(self, line: bytes, pending: list[bytes]) -> None:
        values = tokens(line, 2)
        self.view.untagged(line, values, pending)
        if values and isinstance(values[0], bytes) and values[0].upper() == b"BYE":
            raise StressError(f"server said BYE: {line!r}")

    def _tagged(self, line: bytes, command: bytes) -> None:
        status = line.split(b" ", 2)[1].upper()
        if status != b"OK":
            self.view.fail(f"tagged {status.decode()}", line, command)
            return
        match = APPENDUID.search(line)
        if match is not None and self._last_token is not None:
            uid, token = int(match.group(1)), self._last_token
            with self.shared.lock:
                known = self.shared.uid_token.setdefault(uid, token)
            if known != token:
                self.view.fail(f"APPENDUID {uid} names another message", line, command)

    def ok(self, command: bytes) -> None:
        self.run([command])

    # ---- helpers ----------------------------------------------------------------------------
    def sync(self) -> None:
        """Learn UID and flags of every message the view does not know yet (as a client does
        after EXISTS)."""
        unknown = self.view.unknown()
        if unknown:
            items = b"(UID FLAGS MODSEQ)" if self.condstore else b"(UID FLAGS)"
            self.ok(b"FETCH " + seqset(unknown) + b" " + items)

    def known_uids(self) -> list[int]:
        return [s.uid for s in self.view.slots if s.uid is not None]

    def seq_range(self) -> bytes:
        n = len(self.view.slots)
        a = self.rng.randint(1, n)
        b = min(n, a + self.rng.choice([0, 0, 1, 3, 10]))
        return b"%d" % a if a == b else self.rng.choice([b"%d:%d" % (a, b), b"%d,%d" % (a, b)])

    def uid_range(self) -> bytes:
        uids = self.known_uids()
        if not uids or self.rng.random() < 0.1:
            return b"1:*"
        a = self.rng.choice(uids)
        b = a + self.rng.choice([0, 0, 2, 8])
        return b"%d" % a if a == b else b"%d:%d" % (a, b)

    def flags(self) -> bytes:
        pool = SYSTEM + LABELS
        chosen = self.rng.sample(pool, self.rng.randint(1, 3))
        if self.rng.random() < 0.08:
            chosen.append(self.keywords.new())
        return b"(" + " ".join(chosen).encode() + b")"

    # ---- the random commands ----------------------------------------------------------------
    def fetch_command(self, uid: bool) -> bytes:
        items = self.rng.choice([b"(FLAGS)", b"(UID FLAGS)", b"(UID RFC822.SIZE BODY.PEEK[])",
                                 b"(BODY.PEEK[HEADER.FIELDS (SUBJECT X-STRESS-TOKEN)] FLAGS)",
                                 b"(UID ENVELOPE INTERNALDATE)", b"(BODY[] UID)", b"FAST"])
        if self.condstore and self.rng.random() < 0.3:
            items = items[:-1] + b" MODSEQ)" if items.endswith(b")") else b"(MODSEQ FLAGS)"
        return (b"UID FETCH " + self.uid_range() if uid else b"FETCH " + self.seq_range()) + \
            b" " + items

    def store_command(self, uid: bool) -> bytes:
        mode = self.rng.choice([b"+FLAGS", b"+FLAGS", b"-FLAGS", b"FLAGS"])
        silent = self.rng.random() < 0.15
        target = self.uid_range() if uid else self.seq_range()
        if silent:   # not echoed: the view forgets what it knew of them once all is answered
            self._silent.append((target, uid, [] if uid else self._targets(target, False)))
        return (b"UID STORE " if uid else b"STORE ") + target + b" " + mode + \
            (b".SILENT " if silent else b" ") + self.flags()

    def _targets(self, target: bytes, uid: bool) -> list:
        """The slots a set names now: sequence numbers are resolved at once (an EXPUNGE later in
        the group would shift them), UIDs after the group (`_forget`)."""
        found = []
        for part in target.split(b","):
            lo, _, hi = part.partition(b":")
            top = 1 << 62 if hi == b"*" else int(hi or lo)
            found += [slot for n, slot in enumerate(self.view.slots, 1)
                      if (slot.uid if uid else n) is not None
                      and int(lo) <= (slot.uid if uid else n) <= top]
        return found

    def _forget(self, target: bytes, uid: bool, slots: list) -> None:
        for slot in slots + (self._targets(target, True) if uid else []):
            slot.flags = None

    def search_command(self, uid: bool) -> bytes:
        key = self.rng.choice([b"ALL", b"FLAGGED", b"UNSEEN", b"KEYWORD $Label1", b"DELETED",
                               b"SUBJECT " + self.rng.choice(WORDS).encode(),
                               b"HEADER X-Stress-Token s", b"OR SEEN ANSWERED",
                               b"NOT KEYWORD $Label2", b"UID " + self.uid_range(), b"1:*"])
        ret = b"RETURN (ALL) " if self.rng.random() < 0.3 else b""   # ESEARCH (RFC 4731)
        return (b"UID SEARCH " if uid else b"SEARCH ") + ret + key

    def append(self) -> None:
        token, body = self.keywords.message(self.rng)
        self._last_token = token
        flags = self.flags() + b" " if self.rng.random() < 0.5 else b""
        self.ok(b"APPEND INBOX " + flags + b"{%d+}\r\n" % len(body) + body)

    def expunge(self) -> None:
        if self.rng.random() < 0.5:
            target = self.uid_range()
            self.run([b"UID STORE " + target + b" +FLAGS (\\Deleted)", b"UID EXPUNGE " + target])
        else:
            self.run([b"STORE " + self.seq_range() + b" +FLAGS (\\Deleted)", b"EXPUNGE"])

    def idle(self) -> None:
        tag = next(self.tags)
        command = tag + b" IDLE"
        self.conn.send(command + b"\r\n")
        while not (line := self.conn.response()).startswith(b"+"):
            if not line.startswith(b"* "):
                raise StressError(f"IDLE answered {line!r}")
            self._untagged(line, [command])
        deadline = time.monotonic() + self.rng.uniform(0.05, 0.4)
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.conn.response(timeout=left)
            except socket.timeout:
                break
            self._untagged(line, [command])
        self.conn.send(b"DONE\r\n")
        self._until_tagged(collections.deque([(tag, command, None)]))

    def pipeline(self) -> None:
        head = [self.rng.choice([self.fetch_command(False), self.store_command(False),
                                 self.search_command(False)])
                for _ in range(self.rng.randint(0, 2))] if self.view.slots else []
        tail = [self.rng.choice([self.fetch_command(True), self.store_command(True),
                                 self.search_command(True), b"NOOP"])
                for _ in range(self.rng.randint(1, 3))]
        self.run(head + tail)

    def step(self) -> str:
        n = len(self.view.slots)
        weights = {"append": 6 if n < 30 else 1, "fetch": 5, "uid fetch": 4, "store": 4,
                   "uid store": 3, "expunge": 3 if n > 8 else 1, "search": 3, "uid search": 2,
                   "noop": 1, "idle": 1, "pipeline": 3}
        if n == 0:
            weights.update(fetch=0, store=0, search=0)
        kind = self.rng.choices(list(weights), list(weights.values()))[0]
        if kind == "append":
            self.append()
        elif kind in ("fetch", "uid fetch"):
            self.ok(self.fetch_command(kind.startswith("uid")))
        elif kind in ("store", "uid store"):
            self.ok(self.store_command(kind.startswith("uid")))
        elif kind in ("search", "uid search"):
            self.ok(self.search_command(kind.startswith("uid")))
        elif kind == "expunge":
            self.expunge() if n else self.append()
        elif kind == "noop":
            self.ok(b"NOOP")
        elif kind == "idle":
            self.idle()
        else:
            self.pipeline()
        self.counts[kind] += 1
        self.sync()
        return kind

    # ---- checkpoint -------------------------------------------------------------------------
    def settle(self, strict: bool = True) -> list:
        """NOOP, then a full FETCH that must not change the picture; returns the picture.
        Not `strict`: a change may still be on its way from another replica (it may arrive
        with the FETCH), so a changed picture is not an error (the caller settles again)."""
        self.ok(b"NOOP")
        self.sync()
        before = self.view.picture()
        if before:
            self.ok(b"FETCH 1:* (UID FLAGS)")
        after = self.view.picture()
        present = {uid for uid, _ in after} & self.view.nil_uids
        if present:
            self.view.fail(f"UIDs {sorted(present)} were answered as expunged (NIL) but exist",
                           b"FETCH 1:* (UID FLAGS)", b"checkpoint")
        self.view.nil_uids.clear()
        for seq, (old, new) in enumerate(zip(before, after, strict=False), 1):
            if old != new and strict:
                self.view.fail(f"seq {seq}: told {old}, but the mailbox has {new}",
                               b"FETCH 1:* (UID FLAGS)", b"checkpoint")
        return after


class Keywords:
    """Brand-new keyword names and unique message bodies, shared by the sessions."""

    def __init__(self, shared: Shared, seed: int):
        self.shared, self.seed = shared, seed
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def new(self) -> str:
        with self._lock:
            n = next(self._count)
        return f"kw{self.seed % 1000}x{min(n, MAX_NEW_KEYWORDS)}"

    def message(self, rng: random.Random) -> tuple[bytes, bytes]:
        token = b"t%016x" % rng.getrandbits(64)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 200)))
        body = (b"From: Stress <stress@example.org>\r\nTo: you@example.com\r\n"
                b"Subject: " + " ".join(rng.sample(WORDS, 2)).encode() + b"\r\n"
                b"Message-ID: <" + token + b"@example.org>\r\nX-Stress-Token: " + token + b"\r\n"
                b"\r\n" + words.encode() + b"\r\n")
        with self.shared.lock:
            self.shared.bodies[token] = body
        return token, body


def verb(command: bytes) -> str:
    """b"t1 UID FETCH 1:* (FLAGS)" -> "UID FETCH"."""
    words = command.split(b" ", 3)[1:3]
    name = words[0].upper()
    return (name + b" " + words[1].upper() if name == b"UID" and len(words) > 1 else name).decode()


def seqset(numbers: list[int]) -> bytes:
    out, start, prev = [], None, None
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
            start = prev = n
    out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(out)


def run_stress(target: Target, *, sessions: int = 6, seconds: float = 20.0,
               round_seconds: float = 2.5, seed: int | None = None,
               allow_nil: bool = False, shared: Shared | None = None,
               others: tuple[Target, ...] = ()) -> Result:
    """Run the tester against `target`; never raises for server behaviour (see Result.errors).
    `allow_nil`: tolerate RFC 2180 4.1.2 (NIL data for messages expunged elsewhere, model.py).
    `shared`: the `Shared` of an earlier run on the same account (its appended bodies).
    `others`: more servers on the same mailbox (gateway replicas): sessions are spread over all
    of them by pairs; as a change reaches another replica a moment later (its change feed), a
    checkpoint whose pictures differ is settled again, every `SETTLE_POLL_S`, for at most
    `SETTLE_BOUND_S`, before the difference counts as an error."""
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
    timings: dict[str, list[float]] = collections.defaultdict(list)
    started = time.monotonic()

    def worker(sid: int) -> None:
        rng = random.Random(seed * 1000 + sid)
        session = Session(sid, targets[(sid // 2) % len(targets)], shared, rng, sid % 2 == 1,
                          keywords, counts, allow_nil)
        try:
            session.open()
            barrier.wait()
            for round_no in range(rounds):
                deadline = time.monotonic() + round_seconds
                session.timings = timings
                while time.monotonic() < deadline:
                    session.step()
                session.timings = None
                barrier.wait()
                attempts = 1 if not others else int(SETTLE_BOUND_S / SETTLE_POLL_S)
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
