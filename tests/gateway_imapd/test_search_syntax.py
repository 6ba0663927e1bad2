"""SEARCH syntax answered like Dovecot 2.3: a search key is an atom (RFC 3501 9, search-key), so
a quoted string or a literal where a key belongs is BAD, while the keys' own string arguments
(astring, date, charset) may be quoted. Each command is sent to Dovecot and to the gateway and
their answers compared (the tagged status and every untagged line)."""

from __future__ import annotations

from .conftest import GatewayHandle, differences_from_dovecot, message
from .test_partial import _run, mismatches

COMMANDS = [
    b'SEARCH "SUBJECT" "message"', b'SEARCH "ALL"', b'SEARCH ALL "UNSEEN"', b'SEARCH NOT "ALL"',
    b'SEARCH OR "SEEN" ALL', b'SEARCH OR ALL "SEEN"', b'SEARCH ("ALL")', b'SEARCH (ALL "SEEN")',
    b"SEARCH {3+}\r\nALL", b"SEARCH NOT {3+}\r\nALL", b'UID SEARCH "ALL"', b'SEARCH "1:*"',
    b'SEARCH "*"', b'SEARCH RETURN (COUNT) "ALL"', b'SORT (SUBJECT) UTF-8 "ALL"',
    b'UID SORT (ARRIVAL) UTF-8 "SUBJECT" "message"', b'SEARCH CHARSET UTF-8 "ALL"',
    # a key's string arguments may be quoted (astring, date, charset)
    b'SEARCH SUBJECT "message"', b'SEARCH HEADER "Subject" "message 1"',
    b'SEARCH CHARSET "UTF-8" ALL', b'SEARCH SINCE "1-Jan-2020"', b'SEARCH BODY {4+}\r\nbody',
    b'SEARCH LARGER "10"', b'SEARCH UID "1:*"', b'SEARCH NIL',
]


async def test_search_keys_are_atoms_like_dovecot(dovecot, tmp_path, nursery, gateway_store):
    user, password = dovecot.add_user()
    other = dovecot.add_user()   # Dovecot's side: not the gateway's POP3 mailbox
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store)
    await gateway.start(nursery)

    def compare(ours, theirs) -> list[str]:
        for client in (ours, theirs):
            _run(client, b"CREATE Work")
            for n in range(3):
                body = message(n)
                _run(client, b"APPEND Work {%d+}\r\n" % len(body) + body)
            _run(client, b"SELECT Work")
        return mismatches(ours, theirs, COMMANDS)

    bad = await differences_from_dovecot(gateway, dovecot, other, compare)
    assert not bad, "\n".join(bad)
