"""IMAP4rev2 (RFC 9051) against Dovecot IMAP.

Dovecot 2.3 speaks IMAP4rev1 only, so each IMAP4rev2 answer of the gateway is compared with
the IMAP4rev1 answer that RFC 9051 appendix E says it replaces, from Dovecot, on the same
mailbox built by the same commands: SEARCH answers as Dovecot's `SEARCH RETURN (ALL)` (ESEARCH,
RFC 9051 6.4.4), SELECT as Dovecot's SELECT without RECENT and the UNSEEN code plus the LIST
line Dovecot gives for that name (6.3.2), FETCH FLAGS and new-mail updates as Dovecot's without
\\Recent (E.5), and `OK [CLOSED]` when one SELECT closes another as Dovecot sends it with
QRESYNC (RFC 7162 3.2.11). Not compared: UIDVALIDITY, HIGHESTMODSEQ and MAILBOXID
(server-specific; Dovecot 2.3 has no OBJECTID).
"""

from __future__ import annotations

import imaplib
import re

import trio

from .conftest import message
from .test_utf8_accept import _dovecot, _ok, _run

FOLDER = b"Rev2"
SEEDS = [(b"(\\Seen)", 1), (None, 2), (b"(\\Flagged $Work)", 3), (b"(\\Seen \\Answered)", 4),
         (None, 5)]
SEARCHES = [b"ALL", b"UNSEEN", b"FLAGGED", b"KEYWORD $Work", b"2:4 SEEN", b"NOT ALL",
            b"SUBJECT message", b"OR ANSWERED FLAGGED"]
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_SORTED_LIST = re.compile(rb"^(\* (?:OK \[PERMANENTFLAGS|FLAGS) \()([^)]*)(\).*)$")


def _select_lines(lines: list[bytes]) -> set[bytes]:
    """SELECT lines without the server-specific ones, flag lists sorted, texts dropped."""
    out = set()
    for line in lines:
        line = line.rstrip(b"\r\n")
        if re.search(rb"UIDVALIDITY|HIGHESTMODSEQ|MAILBOXID|RECENT$|\[UNSEEN ", line):
            continue
        match = _SORTED_LIST.match(line)
        if match:
            line = match.group(1) + b" ".join(sorted(match.group(2).split())) + match.group(3)
        out.add(line.split(b"] ")[0])
    return out


def _flags_sorted(lines: list[bytes]) -> list[bytes]:
    """FETCH FLAGS lists in one order (servers may give flags in any order)."""
    return [_FLAGS.sub(lambda m: b"FLAGS (" + b" ".join(sorted(m.group(1).split())) + b")", x)
            for x in lines]


def _no_recent(lines: list[bytes]) -> list[bytes]:
    return [line.replace(b"\\Recent ", b"").replace(b" \\Recent", b"")
            .replace(b"\\Recent", b"") for line in lines if not line.endswith(b"RECENT\r\n")]


def _same_tag(ours: imaplib.IMAP4, theirs: imaplib.IMAP4, tag: bytes, mine: bytes,
              dovecot: bytes) -> tuple[list[bytes], list[bytes]]:
    """Send with one tag to both (ESEARCH echoes it)."""
    out = []
    for client, command in ((ours, mine), (theirs, dovecot)):
        client.send(tag + b" " + command + b"\r\n")
        lines = []
        while not (line := client.readline()).startswith(tag + b" "):
            lines.append(line)
        assert line.split()[1] == b"OK", (command, line)
        out.append(lines)
    return out[0], out[1]


async def test_imap4rev2_answers_like_dovecot_rev1_equivalents(gateway):
    def compare() -> None:
        ours, theirs, other = gateway.imaplib(), _dovecot(gateway), gateway.imaplib()
        caps = _ok(ours, b"CAPABILITY")[0]
        # RFC 9051 includes BINARY (RFC 3516, FETCH BINARY[] and APPEND's literal8)
        for cap in (b" IMAP4rev2", b" IMAP4rev1", b" BINARY"):
            assert cap in caps, (cap, caps)
        assert _ok(ours, b"ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2\r\n"]
        _ok(theirs, b"ENABLE QRESYNC")
        for client in (ours, theirs):
            _ok(client, b"CREATE " + FOLDER)
            for flags, n in SEEDS:
                raw = message(n)
                _ok(client, b"APPEND " + FOLDER + (b" " + flags if flags else b"") +
                    b" {%d+}\r\n" % len(raw) + raw)
        mine, want = _ok(ours, b"SELECT " + FOLDER), _ok(theirs, b"SELECT " + FOLDER)
        listed = _ok(theirs, b'LIST "" ' + FOLDER)
        assert listed == [b'* LIST (\\HasNoChildren) "/" Rev2\r\n']
        assert _select_lines(mine) == _select_lines(want) | {listed[0].rstrip(b"\r\n")}, mine
        assert not [x for x in mine if b"RECENT" in x or b"[UNSEEN" in x], mine
        for n, criteria in enumerate(SEARCHES):
            for uid in (b"", b"UID "):
                tag = b"s%d%s" % (n, uid.strip())
                got, expected = _same_tag(ours, theirs, tag, uid + b"SEARCH " + criteria,
                                          uid + b"SEARCH RETURN (ALL) " + criteria)
                assert got == expected, (criteria, got, expected)
                assert got[0].startswith(b'* ESEARCH (TAG "%s")' % tag), got
        fetch = b"FETCH 1:* (UID FLAGS)"
        assert _flags_sorted(_ok(ours, fetch)) == _flags_sorted(_no_recent(_ok(theirs, fetch)))
        # new mail seen by NOOP: EXISTS without RECENT (E.5)
        raw = message(9)
        _ok(other, b"APPEND " + FOLDER + b" {%d+}\r\n" % len(raw) + raw)
        theirs_other = imaplib.IMAP4(gateway.dovecot.host, gateway.dovecot.imap_port, timeout=30)
        theirs_other.login(gateway.user, gateway.password)
        _ok(theirs_other, b"APPEND " + FOLDER + b" {%d+}\r\n" % len(raw) + raw)
        assert _ok(ours, b"NOOP") == _no_recent(_ok(theirs, b"NOOP")) == [b"* 6 EXISTS\r\n"]
        # SELECT of another mailbox closes this one with OK [CLOSED] first
        mine, want = _ok(ours, b"EXAMINE INBOX"), _ok(theirs, b"EXAMINE INBOX")
        assert mine[0] == want[0] == b"* OK [CLOSED] Previous mailbox closed.\r\n"
        # \Recent stays for IMAP4rev1 sessions: the IMAP4rev2 one claimed none
        lines = _ok(other, b"SELECT " + FOLDER)
        assert b"* 6 RECENT\r\n" in lines, lines
        for client in (ours, theirs, other, theirs_other):
            client.logout()

    await trio.to_thread.run_sync(compare)


async def test_imap4rev2_session_details(gateway):
    gateway.deliver(message(1))

    def scenario() -> None:
        rev2, rev1 = gateway.imaplib(), gateway.imaplib()
        _ok(rev2, b"ENABLE IMAP4rev2")
        # RFC 9051 5.1: mailbox names are UTF-8 (UTF8=ACCEPT is part of IMAP4rev2)
        _ok(rev2, 'CREATE "Grüße"'.encode())
        assert _ok(rev2, b'LIST "" "G*"') == ['* LIST (\\HasNoChildren) "/" "Grüße"\r\n'.encode()]
        assert _ok(rev1, b'LIST "" "G*"') == [b'* LIST (\\HasNoChildren) "/" Gr&APwA3w-e\r\n']
        lines = _ok(rev2, "SELECT \"Grüße\"".encode())   # an empty mailbox
        assert '* LIST (\\HasNoChildren) "/" "Grüße"\r\n'.encode() in lines, lines
        # unlike after ENABLE UTF8=ACCEPT alone, SEARCH may name a charset (RFC 9051 6.4.4)
        tag_lines, done = _run(rev2, b"SEARCH CHARSET UTF-8 ALL")
        assert done.split()[1] == b"OK" and tag_lines == [
            b'* ESEARCH (TAG "' + done.split()[0] + b'")\r\n'], tag_lines
        _ok(rev2, b"SELECT INBOX")
        assert _ok(rev2, b"FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS ())\r\n"]
        assert _run(rev2, b"FETCH 1 (BINARY.SIZE[1])")[1].split()[1] == b"OK"   # in IMAP4rev2
        assert _ok(rev1, b"SELECT INBOX")[3] == b"* 1 RECENT\r\n"   # not taken by rev2
        # IMAP4rev1: [CLOSED] only with QRESYNC enabled (RFC 7162 3.2.11), as Dovecot
        assert not [x for x in _ok(rev1, b"SELECT INBOX") if b"CLOSED" in x]
        _ok(rev1, b"UNSELECT")
        _ok(rev1, b"ENABLE QRESYNC")
        _ok(rev1, b"SELECT INBOX")
        assert _ok(rev1, b"EXAMINE INBOX")[0] == b"* OK [CLOSED] Previous mailbox closed.\r\n"
        for client in (rev2, rev1):
            client.logout()

    await trio.to_thread.run_sync(scenario)


async def test_imap4rev2_has_no_recent_keys_or_status_item(gateway):
    """RFC 9051 dropped \\Recent: STATUS RECENT (status-att) and the NEW, OLD and RECENT search
    keys (search-key) are not in its grammar, so an IMAP4rev2 session gets BAD for them, in
    SEARCH, SORT, THREAD and LIST-STATUS alike; an IMAP4rev1 session keeps them."""
    gateway.deliver(message(1))

    def scenario() -> None:
        rev2, rev1 = gateway.imaplib(), gateway.imaplib()
        _ok(rev2, b"ENABLE IMAP4rev2")
        for client in (rev2, rev1):
            _ok(client, b"SELECT INBOX")
        for command in (b"STATUS INBOX (MESSAGES RECENT)", b'LIST "" INBOX RETURN (STATUS (RECENT))',
                        b"SEARCH NEW", b"SEARCH OLD", b"UID SEARCH RECENT", b"SEARCH NOT (OR SEEN RECENT)",
                        b"SORT (DATE) UTF-8 NEW", b"THREAD REFERENCES UTF-8 OLD"):
            lines, done = _run(rev2, command)
            assert lines == [] and done.split()[1] == b"BAD", (command, lines, done)
        assert _ok(rev2, b"STATUS INBOX (MESSAGES UNSEEN)") == [
            b"* STATUS INBOX (MESSAGES 1 UNSEEN 1)\r\n"]
        tag_lines, done = _run(rev2, b"SEARCH UNSEEN")
        assert tag_lines == [b'* ESEARCH (TAG "' + done.split()[0] + b'") ALL 1\r\n'], tag_lines
        # IMAP4rev1 unchanged: the rev1 session holds \Recent for the message (rev2 claims none)
        assert _ok(rev1, b"STATUS INBOX (MESSAGES RECENT)") == [
            b"* STATUS INBOX (MESSAGES 1 RECENT 0)\r\n"]
        for command, found in ((b"SEARCH NEW", b" 1"), (b"SEARCH RECENT", b" 1"), (b"SEARCH OLD", b"")):
            assert _ok(rev1, command) == [b"* SEARCH" + found + b"\r\n"], command
        assert _ok(rev1, b"SORT (DATE) UTF-8 NEW") == [b"* SORT 1\r\n"]
        for client in (rev2, rev1):
            client.logout()

    await trio.to_thread.run_sync(scenario)


RFC9051_KEYWORDS = b"$Forwarded $Junk $MDNSent $NotJunk $Phishing"   # RFC 9051 2.3.2


async def test_imap4rev2_keywords_of_rfc9051(gateway):
    """RFC 9051 2.3.2's keywords are ordinary keywords here: PERMANENTFLAGS has \\* so a
    client may set them (the gateway sets none itself: no junk filter), the first STORE
    announces them in FLAGS and PERMANENTFLAGS (7.3.5), they are kept (another session and a
    later EXAMINE see them) and searchable."""
    gateway.deliver(message(1))
    system = b"\\Answered \\Deleted \\Draft \\Flagged \\Seen"

    def scenario() -> None:
        rev2, rev1 = gateway.imaplib(), gateway.imaplib()
        _ok(rev2, b"ENABLE IMAP4rev2")
        lines = _ok(rev2, b"SELECT INBOX")
        assert lines[:2] == [b"* FLAGS (" + system + b")\r\n", b"* OK [PERMANENTFLAGS (\\* "
                             + system + b")] Flags permitted.\r\n"], lines
        assert _ok(rev2, b"STORE 1 +FLAGS (" + RFC9051_KEYWORDS + b")") == [
            b"* FLAGS (" + RFC9051_KEYWORDS + b" " + system + b")\r\n",
            b"* OK [PERMANENTFLAGS (" + RFC9051_KEYWORDS + b" \\* " + system
            + b")] Flags permitted.\r\n",
            b"* 1 FETCH (FLAGS (" + RFC9051_KEYWORDS + b"))\r\n"]
        tag_lines, done = _run(rev2, b"SEARCH KEYWORD $Phishing KEYWORD $NotJunk")
        assert tag_lines == [b'* ESEARCH (TAG "' + done.split()[0] + b'") ALL 1\r\n'], tag_lines
        lines = _ok(rev2, b"EXAMINE INBOX")
        assert lines[1:3] == [b"* FLAGS (" + RFC9051_KEYWORDS + b" " + system + b")\r\n",
                              b"* OK [PERMANENTFLAGS ()] Flags permitted.\r\n"], lines
        _ok(rev1, b"SELECT INBOX")
        assert _ok(rev1, b"FETCH 1 FLAGS") == [
            b"* 1 FETCH (FLAGS (" + RFC9051_KEYWORDS + b" \\Recent))\r\n"]
        for client in (rev2, rev1):
            client.logout()

    await trio.to_thread.run_sync(scenario)


async def test_imap4rev2_subscribed_name_without_mailbox_is_nonexistent(gateway):
    """RFC 9051 6.3.9: a name that is no mailbox is listed only when the selection asks for it
    (a subscription kept after DELETE), and then with \\NonExistent (which implies \\Noselect);
    a plain LIST does not list it."""
    def scenario() -> None:
        rev2 = gateway.imaplib()
        _ok(rev2, b"ENABLE IMAP4rev2")
        _ok(rev2, "CREATE \"Grüße\"".encode())
        _ok(rev2, "SUBSCRIBE \"Grüße\"".encode())
        _ok(rev2, "DELETE \"Grüße\"".encode())
        assert _ok(rev2, b'LIST (SUBSCRIBED) "" "G*"') == [
            '* LIST (\\Subscribed \\NonExistent) "/" "Grüße"\r\n'.encode()]
        assert _ok(rev2, b'LIST "" "G*"') == []
        rev2.logout()

    await trio.to_thread.run_sync(scenario)


async def test_imap4rev2_has_no_rfc822_fetch_items(gateway):
    """RFC 9051 appendix E deprecated the RFC822, RFC822.HEADER and RFC822.TEXT FETCH items and
    its fetch-att has none of them (RFC822.SIZE stays): BAD in an IMAP4rev2 session, before
    any FETCH response and without setting \\Seen; an IMAP4rev1 session keeps them."""
    gateway.deliver(message(1))

    def scenario() -> None:
        rev2, rev1 = gateway.imaplib(), gateway.imaplib()
        _ok(rev2, b"ENABLE IMAP4rev2")
        for client in (rev2, rev1):
            _ok(client, b"SELECT INBOX")
        for command in (b"FETCH 1 RFC822", b"FETCH 1 rfc822.header", b"UID FETCH 1 (FLAGS RFC822.TEXT)",
                        b"FETCH 1 (RFC822.SIZE RFC822)"):
            lines, done = _run(rev2, command)
            assert lines == [] and done.split()[1] == b"BAD", (command, lines, done)
        assert _ok(rev2, b"FETCH 1 (FLAGS RFC822.SIZE)") == [
            b"* 1 FETCH (FLAGS () RFC822.SIZE %d)\r\n" % len(message(1))]
        header = _ok(rev1, b"FETCH 1 BODY.PEEK[HEADER]")[0].split(b"{", 1)[1]
        assert _ok(rev1, b"FETCH 1 RFC822.HEADER")[0].split(b"{", 1)[1] == header
        assert b"\\Seen" in _ok(rev1, b"FETCH 1 (RFC822.TEXT FLAGS)")[0].rsplit(b"FLAGS", 1)[1]
        for client in (rev2, rev1):
            client.logout()

    await trio.to_thread.run_sync(scenario)
