"""What one IMAP session may know, and the checks every untagged response must pass.

Theory of operation: a `View` is the client's picture of its selected mailbox, built only from
what the server said: one `Slot` per sequence number (its UID and flags once a response named
them), the flags the server announced with `* FLAGS`, the MODSEQ last seen per message. Every
untagged response is checked against the view *before* it is applied:

* sequence numbers in range (RFC 3501 2.3.1.2); EXPUNGE of 1..EXISTS only; EXISTS never smaller
  than the messages known (7.3.1: only EXPUNGE shrinks the mailbox); RECENT <= EXISTS;
* no EXPUNGE while the command being answered is FETCH, STORE or SEARCH (7.4.1, 5.5);
* a UID never changes under a sequence number, and UIDs ascend with sequence numbers;
* every keyword in a FETCH FLAGS was announced by `* FLAGS` first (7.2.6);
* MODSEQ of a message never goes down (RFC 7162 3.1.2), and one (UID, MODSEQ) means one flag set
  in every session;
* \\Recent on a message in one session only (RFC 3501 2.3.2);
* bodies and sizes equal what was appended (the `Shared` record, keyed by a token header);
* with QRESYNC (RFC 7162 3.2.10): VANISHED instead of EXPUNGE, under the same 7.4.1 rule.

`Shared` is the state every session of a run sees (under a lock): appended bodies by token,
UID -> token, the session holding \\Recent per UID, flags per (UID, MODSEQ), and the errors.
UIDs are keyed by the mailbox's UIDVALIDITY (`View.space`): a mailbox keeps it across RENAME,
and a mailbox created again under an old name gets a new one (RFC 3501 2.3.1.1).
"""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .wire import Str

TOKEN = re.compile(rb"X-Stress-Token: (\w+)")
# 7.4.1: no EXPUNGE while answering these (SORT: RFC 5256 3, as SEARCH)
SEQ_COMMANDS = {b"FETCH", b"STORE", b"SEARCH", b"SORT"}
RESP_CODE = re.compile(rb"^OK \[(UIDVALIDITY|HIGHESTMODSEQ) (\d+)\]", re.I)


@dataclass
class Slot:
    uid: int | None = None
    flags: frozenset[str] | None = None    # without \Recent; None: not known
    modseq: int = 0


@dataclass
class Shared:
    bodies: dict[bytes, bytes] = field(default_factory=dict)      # token -> appended body
    uid_token: dict[tuple, bytes] = field(default_factory=dict)        # (space, uid) -> token
    recent_owner: dict[tuple, int] = field(default_factory=dict)       # (space, uid) -> session
    modseq_flags: dict[tuple, frozenset[str]] = field(default_factory=dict)   # (space, uid, modseq)
    errors: list[str] = field(default_factory=list)
    traces: dict[int, collections.deque] = field(default_factory=dict)   # session -> lines
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_first_error: Callable[[], None] | None = None   # e.g. write the traces (run.py)

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)
            first = len(self.errors) == 1
        if first and self.on_first_error is not None:
            self.on_first_error()


def _flag_set(values) -> frozenset[str]:
    return frozenset(bytes(v).decode() for v in values)


class View:
    def __init__(self, sid: int, shared: Shared, allow_nil: bool = False, space: object = None):
        self.sid, self.shared = sid, shared
        self.space = space                  # the mailbox's UIDVALIDITY, once SELECT said it
        self.highestmodseq = 0              # as SELECT/EXAMINE said it (RFC 7162 3.1.2.1)
        self.vanished_earlier: set[int] = set()   # RFC 7162 3.2.5.1, during SELECT
        self.vanished: set[int] = set()     # every UID a VANISHED (without EARLIER) named
        self.reported: set[int] = set()     # UIDs a FETCH named while SELECT was answered
        self.qresync = False                # RFC 7162 3.2.10: EXPUNGE is never sent
        self.read_only = False              # EXAMINE: \\Recent shown, not claimed (RFC 3501 6.3.2)
        # RFC 2180 4.1.2 (Dovecot's choice): data of a message another session expunged may be
        # NIL/0 until this session is told. The gateway must do 4.1.1 (data stays readable), so
        # it runs with allow_nil=False. Each UID answered so must really be gone at the next
        # checkpoint (`nil_uids`).
        self.allow_nil = allow_nil
        self.nil_uids: set[int] = set()
        self.slots: list[Slot] = []
        self.defined: set[str] = set()
        self.recent: set[int] = set()
        self.errors = 0

    # ---- errors -------------------------------------------------------------------------------
    def fail(self, what: str, line: bytes, command: bytes | None) -> None:
        self.errors += 1
        cmd = command[:80] if command else b"(none)"
        self.shared.error(f"session {self.sid}: {what}\n    response: {line[:200]!r}\n"
                          f"    during: {cmd!r}")

    # ---- the untagged responses ---------------------------------------------------------------
    def untagged(self, line: bytes, values: list, pending: list[bytes]) -> None:
        """Check, then apply, one untagged response (`values` without the leading "*") received
        while the `pending` commands (tag included) were not completed. A server may run
        pipelined commands concurrently (Dovecot does), so a response belongs to none of them
        in particular, except an ESEARCH (its TAG)."""
        command = pending[0] if len(pending) == 1 else b" | ".join(pending)
        code = RESP_CODE.match(line[2:])
        if code is not None:
            name, number = code.group(1).upper(), int(code.group(2))
            if name == b"UIDVALIDITY":
                self.space = number
            else:
                self.highestmodseq = number
        if values and values[0] == b"VANISHED":
            self._vanished(values[1:], line, command, pending)
            return
        if len(values) >= 2 and isinstance(values[0], bytes) and values[0].isdigit():
            if bytes(values[1]).upper() == b"EXPUNGE" and any(
                    _verb(c) in SEQ_COMMANDS for c in pending):
                self.fail("EXPUNGE while answering FETCH/STORE/SEARCH", line, command)
        if len(values) >= 2 and isinstance(values[0], bytes) and values[0].isdigit():
            number, kind = int(values[0]), bytes(values[1]).upper()
            if kind == b"EXISTS":
                self._exists(number, line, command)
            elif kind == b"RECENT":
                if number > len(self.slots):
                    self.fail(f"RECENT {number} > EXISTS {len(self.slots)}", line, command)
            elif kind == b"EXPUNGE":
                self._expunge(number, line, command)
            elif kind == b"FETCH":
                self._fetch(number, values[2] if len(values) > 2 else [], line, command)
            return
        kind = bytes(values[0]).upper() if values and isinstance(values[0], bytes) else b""
        if kind == b"FLAGS" and len(values) > 1 and isinstance(values[1], list):
            self.defined = set(_flag_set(values[1]))
        elif kind == b"SEARCH" and len(pending) == 1 and _verb(pending[0]) == b"SEARCH":
            self._search(values[1:], line, command)
        elif kind == b"SORT" and len(pending) == 1 and _command_name(pending[0]) == b"SORT":
            self.sort_result(values[1:], line, command)
        elif kind == b"ESEARCH" and len(values) > 1 and isinstance(values[1], list):
            tag = bytes(values[1][1]) if len(values[1]) == 2 else b""
            owner = [c for c in pending if c.split(b" ", 1)[0] == tag]
            rest = values[2:]
            if not owner:
                self.fail("ESEARCH for no pending command", line, command)
            elif _verb(owner[0]) == b"SEARCH" and len(rest) == 2 and bytes(rest[0]).upper() == b"ALL":
                self._search(_numbers(rest[1]), line, owner[0])

    def _exists(self, number: int, line: bytes, command: bytes | None) -> None:
        if number < len(self.slots):
            self.fail(f"EXISTS {number} shrinks the mailbox of {len(self.slots)}", line, command)
            return
        self.slots += [Slot() for _ in range(number - len(self.slots))]

    def _expunge(self, number: int, line: bytes, command: bytes | None) -> None:
        if self.qresync:
            self.fail("EXPUNGE after ENABLE QRESYNC (RFC 7162 3.2.10: VANISHED)", line, command)
        if not 1 <= number <= len(self.slots):
            self.fail(f"EXPUNGE {number} with only {len(self.slots)} messages", line, command)
            return
        slot = self.slots.pop(number - 1)
        if slot.uid is not None:
            self.recent.discard(slot.uid)

    def _vanished(self, values: list, line: bytes, command: bytes | None,
                  pending: list[bytes]) -> None:
        """RFC 7162 3.2.10: `VANISHED uids` replaces EXPUNGE (same 7.4.1 rule); `VANISHED
        (EARLIER) uids` answers SELECT (QRESYNC ...) or UID FETCH (VANISHED) and expunges
        nothing here."""
        if values and isinstance(values[0], list):
            self.vanished_earlier.update(int(n) for n in _numbers(values[1]))
            return
        if any(_verb(c) in SEQ_COMMANDS for c in pending):
            self.fail("VANISHED while answering FETCH/STORE/SEARCH", line, command)
        for uid in sorted((int(n) for n in _numbers(values[0])), reverse=True):
            self.vanished.add(uid)
            index = next((i for i, s in enumerate(self.slots) if s.uid == uid), None)
            if index is None:   # never told its UID: one of the unknown slots where it fits
                index = self._unknown_slot_for(uid)
            if index is None:
                self.fail(f"VANISHED UID {uid} that is not in the mailbox", line, command)
                continue
            self.slots.pop(index)
            self.recent.discard(uid)

    def _unknown_slot_for(self, uid: int) -> int | None:
        below = 0
        for i, slot in enumerate(self.slots):
            if slot.uid is None and below < uid:
                after = next((s.uid for s in self.slots[i:] if s.uid is not None), None)
                if after is None or uid < after:
                    return i
            elif slot.uid is not None:
                below = slot.uid
        return None

    def _search(self, values: list, line: bytes, command: bytes | None) -> None:
        for value in values:
            if isinstance(value, bytes) and value.isdigit() and not 1 <= int(value) <= len(self.slots):
                self.fail(f"SEARCH result {int(value)} outside 1..{len(self.slots)}", line, command)

    def sort_result(self, values: list, line: bytes, command: bytes) -> None:
        """Each message at most once; SORT: sequence numbers this session knows; of ALL, every
        message but those expunged elsewhere and not announced yet (left out, as by SEARCH)."""
        numbers = [int(v) for v in values if isinstance(v, bytes) and v.isdigit()]
        if len(numbers) != len(values) or len(set(numbers)) != len(numbers):
            self.fail("SORT result with a repeated or malformed number", line, command)
        elif len(numbers) > len(self.slots):
            self.fail(f"SORT gave {len(numbers)} of {len(self.slots)} messages", line, command)
        elif _verb(command) == b"SORT":
            self._search(values, line, command)
        else:
            gone = (self.vanished | self.vanished_earlier).intersection(numbers)
            if gone:   # (QRESYNC sessions: told of them by VANISHED)
                self.fail(f"UID SORT gave UIDs expunged here: {sorted(gone)}", line, command)

    def _fetch(self, seq: int, items_list, line: bytes, command: bytes | None) -> None:
        if not 1 <= seq <= len(self.slots):
            self.fail(f"FETCH {seq} with only {len(self.slots)} messages", line, command)
            return
        if not isinstance(items_list, list) or len(items_list) % 2:
            self.fail("malformed FETCH", line, command)
            return
        items = {bytes(items_list[i]).upper(): items_list[i + 1] for i in range(0, len(items_list), 2)}
        slot = self.slots[seq - 1]
        uid = slot.uid
        if b"UID" in items:
            uid = int(items[b"UID"])
            if command is not None and _verb(command) in (b"SELECT", b"EXAMINE"):
                self.reported.add(uid)
            if slot.uid is not None and slot.uid != uid:
                self.fail(f"seq {seq} was UID {slot.uid}, now UID {uid}", line, command)
                return
            if not self._ascending(seq, uid):
                self.fail(f"UID {uid} at seq {seq} breaks the UID order", line, command)
                return
            slot.uid = uid
        if b"MODSEQ" in items:
            modseq = int(items[b"MODSEQ"][0])
            if modseq < slot.modseq:
                self.fail(f"MODSEQ of seq {seq} went from {slot.modseq} to {modseq}", line, command)
            slot.modseq = max(slot.modseq, modseq)
        if b"FLAGS" in items:
            self._flags(seq, slot, uid, items, line, command)
        for name, value in items.items():
            if name.startswith(b"BODY[") or name == b"RFC822":
                self._body(uid, name, value, line, command)
        if self.allow_nil and items.get(b"RFC822.SIZE") == b"0":
            if uid is not None:
                self.nil_uids.add(uid)
        elif b"RFC822.SIZE" in items and uid is not None:
            token = self.shared.uid_token.get((self.space, uid))
            body = self.shared.bodies.get(token) if token else None
            if body is not None and int(items[b"RFC822.SIZE"]) != len(body):
                self.fail(f"RFC822.SIZE {int(items[b'RFC822.SIZE'])} != {len(body)}", line, command)

    def _ascending(self, seq: int, uid: int) -> bool:
        before = next((s.uid for s in reversed(self.slots[:seq - 1]) if s.uid is not None), 0)
        after = next((s.uid for s in self.slots[seq:] if s.uid is not None), None)
        return before < uid and (after is None or uid < after)

    def _flags(self, seq: int, slot: Slot, uid: int | None, items: dict, line: bytes,
               command: bytes | None) -> None:
        flags = _flag_set(items[b"FLAGS"])
        undeclared = {f for f in flags if not f.startswith("\\")} - self.defined
        if undeclared:   # reported once: a client would take them from here on
            self.fail(f"keywords {sorted(undeclared)} never announced by FLAGS", line, command)
            self.defined |= undeclared
        stored = flags - {"\\Recent"}
        if "\\Recent" in flags and uid is not None and not self.read_only:
            with self.shared.lock:
                owner = self.shared.recent_owner.setdefault((self.space, uid), self.sid)
            if owner != self.sid and uid not in self.recent:   # once per message
                self.fail(f"\\Recent on UID {uid} here and in session {owner}", line, command)
            self.recent.add(uid)
        # Dovecot reports the MODSEQ from before a FETCH BODY[] set \Seen: not comparable
        implicit_seen = any(n.startswith(b"BODY[") or n == b"RFC822" for n in items)
        if b"MODSEQ" in items and uid is not None and not implicit_seen:
            key = (self.space, uid, int(items[b"MODSEQ"][0]))
            with self.shared.lock:
                known = self.shared.modseq_flags.setdefault(key, stored)
            if known != stored:
                self.fail(f"UID {uid} MODSEQ {key[2]} has flags {sorted(known)} elsewhere",
                          line, command)
        slot.flags = stored

    def _body(self, uid: int | None, name: bytes, value, line: bytes, command: bytes | None) -> None:
        if value is None and self.allow_nil:
            if uid is not None:
                self.nil_uids.add(uid)
            return
        if not isinstance(value, Str):
            self.fail(f"{name!r} is not a string", line, command)
            return
        match = TOKEN.search(value)
        if match is None:
            self.fail(f"{name!r} has no token header", line, command)
            return
        token = match.group(1)
        body = self.shared.bodies.get(token)
        if uid is not None:
            with self.shared.lock:
                known = self.shared.uid_token.setdefault((self.space, uid), token)
            if known != token:
                self.fail(f"UID {uid} holds token {token!r}, appended as {known!r}", line, command)
        if body is None:
            self.fail(f"token {token!r} was never appended", line, command)
        elif name == b"BODY[]" and bytes(value) != body:
            self.fail("BODY[] differs from the appended message", line, command)
        elif name != b"BODY[]" and any(part and part not in body
                                       for part in bytes(value).split(b"\r\n")):
            self.fail(f"{name!r} holds a line the appended message does not", line, command)

    # ---- checkpoints ------------------------------------------------------------------------
    def unknown(self) -> list[int]:
        """Sequence numbers whose UID or flags the session does not know yet."""
        return [n for n, s in enumerate(self.slots, 1) if s.uid is None or s.flags is None]

    def picture(self) -> list[tuple[int | None, frozenset[str] | None]]:
        return [(s.uid, s.flags) for s in self.slots]


def _numbers(value) -> list[bytes]:
    """An ESEARCH sequence set "2:4,7" -> [b"2", b"3", b"4", b"7"]."""
    out = []
    for part in bytes(value).split(b","):
        lo, _, hi = part.partition(b":")
        out += [b"%d" % n for n in range(int(lo), int(hi or lo) + 1)]
    return out


def _command_name(command: bytes) -> bytes:
    """b"a1 UID SORT ..." -> b"SORT"; b"a1 SORT ..." -> b"SORT"."""
    verb = _verb(command)
    return command.split(b" ", 3)[2].upper() if verb == b"UID" else verb


def _verb(command: bytes) -> bytes:
    """The command name after the tag: b"a1 FETCH 1 (FLAGS)" -> b"FETCH"."""
    words = command.split(b" ", 2)
    return words[1].upper() if len(words) > 1 else b""
