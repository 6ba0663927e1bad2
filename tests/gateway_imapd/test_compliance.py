"""Compliance defects found against the gateway (issue 17), each pinned by a regression test over
a raw socket: ID at RFC 2971's maximum, SEARCH RETURN (MIN/MAX) with MODSEQ, LSUB with "%",
LIST patterns that are not modified UTF-7. (ENVELOPE's Sender/Reply-To defaults are in the MIME
corpus, compared against Dovecot by tests/gateway_mime and tests/gateway_imapd/test_differential.)"""

from __future__ import annotations

import re
import socket

import trio

from .conftest import message
from .test_condstore import Raw

run = trio.to_thread.run_sync


def max_id_command() -> bytes:
    """RFC 2971 3.3: 30 field/value pairs, fields of 30 octets, values of 1024 octets."""
    pairs = b" ".join(b'"%s" "%s"' % (b"f%029d" % n, b"v" * 1024) for n in range(30))
    return b"ID (" + pairs + b")"


def _raw_lines(sock: socket.socket, file, tag: bytes, line: bytes) -> list[bytes]:
    sock.sendall(tag + b" " + line + b"\r\n")
    out = []
    while True:
        reply = file.readline()
        assert reply, out
        out.append(reply.rstrip(b"\r\n"))
        if reply.startswith(tag + b" "):
            return out


async def test_id_at_rfc2971_maximum_before_and_after_login(gateway):
    command = max_id_command()
    assert len(command) > 31_000   # beyond preauth_max_line (8192)

    def scenario():
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            file = sock.makefile("rb")
            file.readline()
            lines = _raw_lines(sock, file, b"a1", command)
            assert lines[0].startswith(b"* ID (") and lines[-1].startswith(b"a1 OK"), lines
            # every other command keeps the tight pre-login limit
            lines = _raw_lines(sock, file, b"a2", b"NOOP " + b"x" * 9000)
            assert lines == [b"a2 BAD [TOOBIG] Line too long"], lines
            lines = _raw_lines(sock, file, b"a3", b'LOGIN "%s" "%s"' % (
                gateway.user.encode(), gateway.password.encode()))
            assert lines[-1].startswith(b"a3 OK"), lines
            lines = _raw_lines(sock, file, b"a4", command)
            assert lines[0].startswith(b"* ID (") and lines[-1].startswith(b"a4 OK"), lines
            lines = _raw_lines(sock, file, b"a5", b"NOOP")
            assert lines == [b"a5 OK NOOP completed."], lines

    await run(scenario)


async def test_search_return_min_max_modseq_is_of_the_returned_message(gateway):
    for n in range(3):
        gateway.deliver(message(n))

    def scenario():
        a = Raw(gateway.port, gateway.user, gateway.password)
        a.cmd("SELECT INBOX")
        a.cmd("STORE 1 +FLAGS (\\Flagged)")
        a.cmd("STORE 3 +FLAGS (\\Flagged)")
        a.cmd("STORE 2 +FLAGS (\\Answered)")   # message 2 changed last: highest MODSEQ
        mods = {}
        lines = a.cmd("FETCH 1:3 (MODSEQ)")[0]
        for line in [x for x in lines if b" FETCH " in x]:
            m = re.match(rb"\* (\d+) FETCH \(.*MODSEQ \((\d+)\)", line)
            assert m, lines
            mods[int(m.group(1))] = int(m.group(2))
        assert mods[2] > mods[3] > mods[1], mods
        low = min(mods.values())

        def esearch(options: str) -> bytes:
            lines, done = a.cmd(f"SEARCH RETURN ({options}) MODSEQ {low}")
            assert done.split()[1] == b"OK", done
            return lines[0].split(b") ", 1)[1]

        # RFC 4731 3.2 / RFC 7162 3.1.5: MIN or MAX alone -> the MODSEQ of that message
        assert esearch("MIN") == b"MIN 1 MODSEQ %d" % mods[1]
        assert esearch("MAX") == b"MAX 3 MODSEQ %d" % mods[3]
        assert esearch("MIN MAX") == b"MIN 1 MAX 3 MODSEQ %d" % mods[3]
        # with ALL or COUNT: the highest of every match
        assert esearch("COUNT") == b"COUNT 3 MODSEQ %d" % mods[2]
        assert esearch("MIN ALL") == b"MIN 1 ALL 1:3 MODSEQ %d" % mods[2]
        a.close()

    await run(scenario)


async def test_lsub_percent_returns_unsubscribed_parent_as_noselect(gateway):
    def scenario():
        a = Raw(gateway.port, gateway.user, gateway.password)
        for name in ("a", "a/b", "c", "c/d", "e"):
            a.cmd(f"CREATE {name}")
        for line in a.cmd('LSUB "" "*"')[0]:   # start from nothing subscribed but our tree
            a.cmd(f"UNSUBSCRIBE {line.rsplit(b' ', 1)[1].decode()}")
        for name in ("a/b", "c", "c/d"):
            a.cmd(f"SUBSCRIBE {name}")
        # RFC 3501 6.3.9: "a" is unsubscribed, its child a/b is: "%" gives a as \Noselect
        assert a.cmd('LSUB "" "%"')[0] == [b'* LSUB (\\Noselect) "/" a', b'* LSUB () "/" c']
        # "*" reaches a/b itself: its unsubscribed parent is not returned; e never is
        assert a.cmd('LSUB "" "*"')[0] == [b'* LSUB () "/" a/b', b'* LSUB () "/" c',
                                           b'* LSUB () "/" c/d']
        assert a.cmd('LSUB "" "c/%"')[0] == [b'* LSUB () "/" c/d']
        a.cmd("UNSUBSCRIBE a/b")
        assert a.cmd('LSUB "" "%"')[0] == [b'* LSUB () "/" c']
        a.close()

    await run(scenario)


async def test_list_pattern_that_is_not_modified_utf7_answers_ok(gateway):
    def scenario():
        a = Raw(gateway.port, gateway.user, gateway.password)
        a.cmd("CREATE a&-b")
        for pattern in ('"&x"', '"a&-+,-"', '"&Jjo"', '"a&"', '"&AGE-"'):
            for verb in ("LIST", "LSUB"):
                lines, done = a.cmd(f'{verb} "" {pattern}')
                assert (lines, done.split()[1]) == ([], b"OK"), (verb, pattern, lines, done)
        lines, done = a.cmd('LIST "&x" "*"')   # an invalid reference too
        assert (lines, done.split()[1]) == ([], b"OK"), (lines, done)
        assert a.cmd('LIST "" "a&-b"')[0] == [b'* LIST (\\HasNoChildren) "/" a&-b']
        a.close()

    await run(scenario)


async def test_subscriptions_are_names_not_mailboxes(gateway):
    """RFC 3501 6.3.6/6.3.7: DELETE keeps the subscription, SUBSCRIBE takes a name with no
    mailbox (a MAY-check we do not make; Dovecot makes it), LSUB lists it plainly (as Dovecot)
    and LIST (SUBSCRIBED) as \\NonExistent (RFC 5258 3)."""
    def scenario():
        a = Raw(gateway.port, gateway.user, gateway.password)
        for line in a.cmd('LSUB "" "*"')[0]:
            a.cmd(f"UNSUBSCRIBE {line.rsplit(b' ', 1)[1].decode()}")
        assert a.cmd("CREATE Doomed")[1].split()[1] == b"OK"
        assert a.cmd("SUBSCRIBE Doomed")[1].split()[1] == b"OK"
        assert a.cmd("DELETE Doomed")[1].split()[1] == b"OK"
        assert a.cmd("SUBSCRIBE Later/child")[1].split()[1] == b"OK"
        assert a.cmd('LSUB "" "*"')[0] == [b'* LSUB () "/" Doomed', b'* LSUB () "/" Later/child']
        assert a.cmd('LSUB "" "%"')[0] == [b'* LSUB () "/" Doomed',
                                           b'* LSUB (\\Noselect) "/" Later']
        assert a.cmd('LIST (SUBSCRIBED) "" "*"')[0] == [
            b'* LIST (\\Subscribed \\NonExistent) "/" Doomed',
            b'* LIST (\\Subscribed \\NonExistent) "/" Later/child']
        assert not [line for line in a.cmd('LIST "" "*"')[0] if line.endswith(b" Doomed")]
        assert a.cmd("CREATE Later/child")[1].split()[1] == b"OK"
        assert a.cmd('LIST (SUBSCRIBED) "" "Later/*"')[0] == [
            b'* LIST (\\Subscribed) "/" Later/child']
        assert a.cmd("UNSUBSCRIBE Never")[1].split()[1] == b"OK"   # as Dovecot
        assert a.cmd('SUBSCRIBE ""')[1].split()[1] == b"NO"
        a.close()

    await run(scenario)
