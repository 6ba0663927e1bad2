"""SEARCHRES SAVE (RFC 5182) combined with PARTIAL (RFC 5267 4.4, RFC 9394): `$` holds only the
messages of the PARTIAL window (plus MIN/MAX when asked; the whole result with ALL or COUNT, RFC
5182 2.4), for SEARCH and SORT, as Dovecot 2.3.19 does; the gateway used to save the whole
result. Checked by sending the same commands to Dovecot and the gateway and comparing what `$`
then names."""

from __future__ import annotations

from .conftest import GatewayHandle, differences_from_dovecot, message
from .test_partial import _run, mismatches

# SORT by SUBJECT (all distinct): under REVERSE ARRIVAL, messages appended in the same second are
# ordered differently by Dovecot (it reverses the sequence-number tie-break too; RFC 5256 3 does not)
COMMANDS = [b"SEARCH RETURN (SAVE PARTIAL 2:3) ALL", b"FETCH $ (UID)",
            b"UID SEARCH RETURN (SAVE PARTIAL 1:2) NOT DELETED", b"UID FETCH $ (FLAGS)",
            b"SEARCH RETURN (PARTIAL 1:1 SAVE) SUBJECT message", b"SEARCH $",
            b"SEARCH RETURN (SAVE PARTIAL 20:30) ALL", b"SEARCH $",
            b"SEARCH RETURN (SAVE MIN PARTIAL 3:4) ALL", b"SEARCH $",
            b"SEARCH RETURN (SAVE COUNT PARTIAL 2:3) ALL", b"SEARCH $",
            b"SORT RETURN (SAVE PARTIAL 2:3) (REVERSE SUBJECT) UTF-8 ALL", b"SEARCH $",
            b"UID SORT RETURN (SAVE MAX PARTIAL 1:1) (SUBJECT) UTF-8 NOT DELETED", b"SEARCH $"]


async def test_save_with_partial_keeps_the_window_like_dovecot(dovecot, tmp_path, nursery,
                                                                     gateway_store):
    user, password = dovecot.add_user()
    other = dovecot.add_user()   # Dovecot's side: not the gateway's POP3 mailbox
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store)
    await gateway.start(nursery)

    def compare(ours, theirs) -> list[str]:
        for client in (ours, theirs):
            _run(client, b"CREATE Work")
            for n in range(6):
                body = message(n)
                _run(client, b"APPEND Work {%d+}\r\n" % len(body) + body)
            _run(client, b"SELECT Work")
            _run(client, b"STORE 2 +FLAGS.SILENT (\\Deleted)")
        bad = mismatches(ours, theirs, COMMANDS)
        _run(ours, b"SEARCH RETURN (SAVE PARTIAL 2:3) ALL")
        if _run(ours, b"SEARCH $") != [b"* SEARCH 2 3", b"OK"]:   # the window, not all 6
            bad.append("$ is not the PARTIAL window")
        return bad

    bad = await differences_from_dovecot(gateway, dovecot, other, compare)
    assert not bad, "\n".join(bad)
