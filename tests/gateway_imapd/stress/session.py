"""One session of the stress tester (run.py): a client connection, its `model.View`, and the
random commands it sends (steps.py adds mailboxes, COPY/MOVE, QRESYNC, ingest). Every response
goes through the view's checks; a tagged status other than the expected one is an error.

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
from collections.abc import Callable
from dataclasses import dataclass

from . import steps
from .model import Shared, View
from .wire import Bye, Conn, StressError, WireError, seqset, tokens

APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
COPYUID = re.compile(rb"\[COPYUID (\d+) ([\d:,]+) ([\d:,]+)\]")
READ_TIMEOUT = 30.0            # a server silent this long is hung: an error, not a wait
SYSTEM = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft"]
LABELS = ["$Label1", "$Label2", "$Label3", "$Forwarded"]
MAX_NEW_KEYWORDS = 40
TRACE_LINES, TRACE_WIDTH = 3000, 160   # per session: the last lines sent and received
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    password: str


class Session:
    """One client connection and its model (see the module docstring)."""

    def __init__(self, sid: int, target: Target, shared: Shared, rng: random.Random,
                 condstore: bool, keywords: "Keywords", counts: collections.Counter,
                 allow_nil: bool = False, qresync: bool = False):
        self.sid, self.target, self.shared, self.rng = sid, target, shared, rng
        self.condstore, self.keywords, self.counts = condstore or qresync, keywords, counts
        self.qresync, self.allow_nil = qresync, allow_nil
        self.view = View(sid, shared, allow_nil)
        self.mailbox = b"INBOX"
        self.bye_ok = False          # a scratch mailbox is selected: BYE may end the session
        self.timings: dict[str, list[float]] | None = None   # command -> seconds (benchmarks)
        self.tags = (b"s%dt%d" % (sid, n) for n in itertools.count(1))
        self.conn: Conn | None = None
        self._last_token: bytes | None = None
        self._silent: list[tuple[bytes, bool, list]] = []   # STORE .SILENT targets of the group
        self.deliver: Callable[[bytes], None] | None = None  # into the POP3 upstream (ingest)
        self.replicas = False        # other servers share the mailbox (their changes lag)
        self.wide = True             # the whole mix (run_stress's `wide`)
        # what was said, for a failed run's report (run_stress's `trace_dir`)
        self.trace = shared.traces.setdefault(sid, collections.deque(maxlen=TRACE_LINES))

    def _note(self, direction: bytes, line: bytes) -> None:
        self.trace.append(b"%.3f %s %s" % (time.monotonic(), direction, line[:TRACE_WIDTH]))

    # ---- the wire ---------------------------------------------------------------------------
    def open(self, select: bytes = b"SELECT", params: bytes = b"") -> None:
        self.conn = Conn(self.target.host, self.target.port, READ_TIMEOUT)
        greeting = self.conn.response()
        if not greeting.startswith(b"* OK"):
            raise StressError(f"greeting {greeting!r}")
        self.ok(b'LOGIN "%s" "%s"' % (self.target.user.encode(), self.target.password.encode()))
        if self.condstore:
            self.ok(b"ENABLE QRESYNC" if self.qresync else b"ENABLE CONDSTORE")
        self.switch(select, b"INBOX", params)

    def switch(self, select: bytes, mailbox: bytes, params: bytes = b"",
               allow: tuple[bytes, ...] = (b"OK",)) -> bytes:
        """SELECT or EXAMINE `mailbox` with a new view; its tagged status."""
        self.view = View(self.sid, self.shared, self.allow_nil)
        self.view.qresync = self.qresync
        self.view.read_only = select == b"EXAMINE"
        self.mailbox = mailbox
        tagged = self.run([select + b" " + mailbox + params], allow)[0]
        status = self.status(tagged)
        if status == b"OK" and self.condstore and not self.view.highestmodseq:
            self.view.fail("no HIGHESTMODSEQ (RFC 7162 3.1.2.1)", tagged, select + b" " + mailbox)
        if status == b"OK":
            self.sync()
        return status

    @staticmethod
    def status(tagged: bytes) -> bytes:
        return tagged.split(b" ", 2)[1].upper()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.run([b"LOGOUT"])
            except (OSError, WireError, StressError):
                pass
            self.conn.close()

    def run(self, commands: list[bytes], allow: tuple[bytes, ...] = (b"OK",)) -> list[bytes]:
        """Send `commands` pipelined; handle every response; the tagged responses, in order.
        A tagged response that does not start with one of `allow` (after its tag) is an error."""
        pending = collections.deque()
        out = b""
        sent = time.perf_counter()
        for command in commands:
            tag = next(self.tags)
            pending.append((tag, tag + b" " + command, sent, allow))
            out += tag + b" " + command + b"\r\n"
            self._note(b">", tag + b" " + command)
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
            self._note(b"<", line)
            if line.startswith(b"* "):
                self._untagged(line, [entry[1] for entry in pending])
            elif line.startswith(b"+"):
                raise StressError(f"unexpected continuation {line!r} during {pending!r}")
            else:
                tag = line.split(b" ", 1)[0]
                for entry in pending:
                    if entry[0] == tag:
                        pending.remove(entry)
                        self._tagged(line, entry[1], entry[3])
                        if entry[2] is not None and self.timings is not None:
                            self.timings[verb(entry[1])].append(time.perf_counter() - entry[2])
                        return line
                raise StressError(f"tagged response {line!r} for no pending command")

    def _untagged(self, line: bytes, pending: list[bytes]) -> None:
        values = tokens(line, 2)
        self._copyuid(line, pending[0] if pending else b"")   # MOVE: untagged (RFC 6851 4.3)
        self.view.untagged(line, values, pending)
        if values and isinstance(values[0], bytes) and values[0].upper() == b"BYE":
            raise (Bye if self.bye_ok else StressError)(f"server said BYE: {line!r}")

    def _tagged(self, line: bytes, command: bytes, allow: tuple[bytes, ...] = (b"OK",)) -> None:
        status = self.status(line)
        if not line.split(b" ", 1)[1].upper().startswith(allow):
            self.view.fail(f"tagged {status.decode()}", line, command)
        if status != b"OK":
            return
        match = APPENDUID.search(line)
        if match is not None and self._last_token is not None:
            space, uid, token = int(match.group(1)), int(match.group(2)), self._last_token
            with self.shared.lock:
                known = self.shared.uid_token.setdefault((space, uid), token)
            if known != token:
                self.view.fail(f"APPENDUID {uid} names another message", line, command)
        self._copyuid(line, command)

    def _copyuid(self, line: bytes, command: bytes) -> None:
        """COPYUID (RFC 4315 3): each destination UID holds its source's message."""
        match = COPYUID.search(line)
        if match is None:
            return
        space = int(match.group(1))
        sources, targets = (_uid_list(match.group(n)) for n in (2, 3))
        if len(sources) != len(targets):
            self.view.fail("COPYUID with sets of different sizes", line, command)
            return
        with self.shared.lock:
            for source, target in zip(sources, targets, strict=True):
                token = self.shared.uid_token.get((self.view.space, source))
                if token is None:
                    continue
                known = self.shared.uid_token.setdefault((space, target), token)
                if known != token:
                    self.shared.errors.append(f"session {self.sid}: COPYUID {target} names "
                                              f"another message\n    response: {line[:200]!r}")

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

    def search_key(self) -> bytes:
        return self.rng.choice([b"ALL", b"FLAGGED", b"UNSEEN", b"KEYWORD $Label1", b"DELETED",
                                b"SUBJECT " + self.rng.choice(WORDS).encode(),
                                b"HEADER X-Stress-Token s", b"OR SEEN ANSWERED",
                                b"NOT KEYWORD $Label2", b"UID " + self.uid_range(), b"1:*"])

    def search_command(self, uid: bool) -> bytes:
        key = self.search_key()
        ret = b"RETURN (ALL) " if self.rng.random() < 0.3 else b""   # ESEARCH (RFC 4731)
        return (b"UID SEARCH " if uid else b"SEARCH ") + ret + key

    def append(self, mailbox: bytes = b"INBOX", allow: tuple[bytes, ...] = (b"OK",),
               size: int = 0) -> None:
        token, body = self.keywords.message(self.rng, size)
        self._last_token = token
        flags = self.flags() + b" " if self.rng.random() < 0.5 else b""
        self.run([b"APPEND " + mailbox + b" " + flags + b"{%d+}\r\n" % len(body) + body], allow)

    def reopen(self) -> None:
        """Log in again after the server closed the connection (a BYE, steps.py)."""
        self.conn.close()
        self.open()

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
        self._note(b">", command)
        while not (line := self.conn.response()).startswith(b"+"):
            self._note(b"<", line)
            if not line.startswith(b"* "):
                raise StressError(f"IDLE answered {line!r}")
            self._untagged(line, [command])
        deadline = time.monotonic() + self.rng.uniform(0.05, 0.4)
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.conn.response(timeout=left)
            except socket.timeout:
                break
            self._note(b"<", line)
            self._untagged(line, [command])
        self.conn.send(b"DONE\r\n")
        self._note(b">", b"DONE")
        self._until_tagged(collections.deque([(tag, command, None, (b"OK",))]))

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
                   "noop": 1, "idle": 1, "pipeline": 3, "copy": 1.5, "move": 1.5, "visit": 1,
                   "scratch": 1.5, "big append": 0.1, "unchanged since": 1.5 * self.condstore,
                   "reconnect": 0.5 * self.qresync, "deliver": 1.0 * (self.deliver is not None),
                   "sort": 2}
        if not self.wide:
            weights.update(dict.fromkeys(WIDE_STEPS, 0))
        if n == 0:
            weights.update(fetch=0, store=0, search=0, copy=0, move=0, sort=0)
        kind = self.rng.choices(list(weights), list(weights.values()))[0]
        if kind in STEPS:
            STEPS[kind](self)
        elif kind == "deliver":
            self.deliver(self.keywords.message(self.rng)[1])
        elif kind == "append":
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


WIDE_STEPS = ("copy", "move", "visit", "scratch", "big append", "unchanged since", "reconnect",
              "deliver", "sort")
STEPS = {"copy": steps.copy, "move": steps.move, "visit": steps.visit, "scratch": steps.scratch,
         "big append": steps.big_append, "unchanged since": steps.unchanged_since,
         "reconnect": steps.reconnect, "sort": steps.sort}


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

    def message(self, rng: random.Random, size: int = 0) -> tuple[bytes, bytes]:
        """A unique message (its token header), of about `size` bytes when given."""
        token = b"t%016x" % rng.getrandbits(64)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 200)))
        if size:
            line = (" ".join(rng.choice(WORDS) for _ in range(12)) + "\r\n")
            words = line * (size // len(line))
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


def _uid_list(text: bytes) -> list[int]:
    """A UID set of COPYUID ("4:6,9", or "6:4": RFC 4315 allows either order) in its order."""
    out: list[int] = []
    for part in text.split(b","):
        lo, _, hi = part.partition(b":")
        a, b = int(lo), int(hi or lo)
        out += range(a, b + 1) if a <= b else range(b, a + 1)
    return out
