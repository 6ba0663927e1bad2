"""QUOTA (RFC 9208) against Dovecot IMAP with its quota plugin (`count` backend, virtual
sizes, the same limits as `gateway.quota`): the same commands on both, compared as untagged
QUOTAROOT/QUOTA lines and as each command's status with its response code (the texts differ).

Not compared: STATUS DELETED / DELETED-STORAGE (Dovecot 2.3 does not know them: checked on
the gateway alone below), and SETQUOTA's response code (both refuse; Dovecot gives none).
"""

from __future__ import annotations

import imaplib
import itertools
import re

import trio
from gateway_mime import wire

from .conftest import GatewayHandle, differences_from_dovecot
from .test_condstore import Raw

QUOTA_DOVECOT = """
mail_plugins = $mail_plugins quota
protocol imap {
  mail_plugins = $mail_plugins imap_quota
}
plugin {
  quota = count:User quota
  quota_rule = *:storage=2k
  quota_rule2 = *:messages=4
  quota_vsizes = yes
}
"""
QUOTA = {"storage": 2048, "messages": 4}
BIG = b"Subject: big\r\n\r\n" + b"y" * 600 + b"\r\n"     # 617 octets: three fit in 2 KiB
SMALL = b"Subject: s\r\n\r\nz\r\n"
SCRIPT = [
    b"GETQUOTAROOT INBOX", b'GETQUOTA "User quota"', b'GETQUOTA ""', b"GETQUOTAROOT Nope/x",
    ("APPEND", BIG), ("APPEND", BIG), ("APPEND", BIG), b'GETQUOTA "User quota"',
    ("APPEND", BIG),                       # 1851 + 617 > 2048: OVERQUOTA
    ("APPEND", SMALL), b'GETQUOTA "User quota"',
    b"SELECT INBOX", b"COPY 1 Sent",       # over the storage limit too
    b"STORE 1:3 +FLAGS.SILENT (\\Deleted)", b"EXPUNGE", b'GETQUOTA "User quota"',
    b"COPY 1 Sent", ("APPEND", SMALL), b"GETQUOTAROOT Sent",
    ("APPEND", SMALL),                     # a fifth message: over the message limit
    b"MOVE 1 Sent", b'GETQUOTA "User quota"',
    b'SETQUOTA "User quota" (STORAGE 100)',
]

_tags = itertools.count(1)
_CODE = re.compile(rb"^\S+ (OK|NO|BAD)(?: \[([A-Z-]+))?")


def _step(client: imaplib.IMAP4, step) -> tuple:
    tag = b"q%d" % next(_tags)
    if isinstance(step, tuple):   # APPEND with a synchronizing literal
        body = step[1]
        client.send(tag + b" APPEND INBOX {%d}\r\n" % len(body))
        line = client.readline()
        if line.startswith(tag):   # Dovecot refuses over quota before the literal (the size
            return _CODE.match(line).groups(), []   # is known); the gateway after it
        assert line.startswith(b"+"), line
        client.send(body + b"\r\n")
    else:
        client.send(tag + b" " + step + b"\r\n")
    replies = wire.read_response(client.readline, client.read, tag)
    status = _CODE.match(replies[-1]).groups()
    if step == SCRIPT[-1]:
        status = status[:1]
    quota = [line.rstrip() for line in replies[:-1] if line.startswith((b"* QUOTA", b"* QUOTAROOT"))]
    return status, quota


async def test_quota_answers_like_dovecot(dovecot_factory, tmp_path, nursery, gateway_store):
    dovecot = dovecot_factory(extra_config=QUOTA_DOVECOT)
    user, password = dovecot.add_user()
    other = dovecot.add_user()
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store, quota=QUOTA)
    await gateway.start(nursery)

    def compare(ours, theirs) -> list[str]:
        _step(theirs, b"CREATE Sent")
        for cap in ("QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"):
            assert cap in ours.capabilities, cap
        bad = []
        for step in SCRIPT:
            want, got = _step(theirs, step), _step(ours, step)
            if want != got:
                bad.append(f"{step!r}\n  dovecot {want}\n  gateway {got}")
        return bad

    bad = await differences_from_dovecot(gateway, dovecot, other, compare)
    assert not bad, f"{len(bad)} of {len(SCRIPT)} differ:\n" + "\n".join(bad)


async def test_status_deleted_items_and_no_quota_root_without_limits(gateway):
    """RFC 9208 4.2: STATUS DELETED and DELETED-STORAGE (what EXPUNGE would free); without
    gateway.quota a mailbox has no quota root (4.3.2) and APPEND is never refused."""
    def scenario():
        a = Raw(gateway.port, gateway.user, gateway.password)
        for _ in range(3):
            a.cmd("APPEND INBOX {%d+}\r\n%s" % (len(BIG), BIG.decode()))
        a.cmd("SELECT INBOX")
        a.cmd("STORE 1:2 +FLAGS (\\Deleted)")
        assert a.cmd("STATUS INBOX (DELETED DELETED-STORAGE MESSAGES)")[0] == [
            b"* STATUS INBOX (DELETED 2 DELETED-STORAGE 2 MESSAGES 3)"]
        assert a.cmd("GETQUOTAROOT INBOX")[0] == [b"* QUOTAROOT INBOX"]
        lines, done = a.cmd('GETQUOTA "User quota"')
        assert (lines, done.split()[1]) == ([], b"NO")
        a.close()

    await trio.to_thread.run_sync(scenario)


async def test_multiappend_over_quota_appends_nothing(dovecot, tmp_path, nursery):
    """RFC 3502 3 with RFC 9208 4.3: a MULTIAPPEND that would pass the quota is refused whole."""
    user, password = dovecot.add_user()
    gateway = GatewayHandle(dovecot, tmp_path, user, password, quota={"messages": 2})
    await gateway.start(nursery)

    def scenario():
        a = Raw(gateway.port, gateway.user, gateway.password)
        three = "APPEND INBOX" + " {%d+}\r\n%s" % (len(SMALL), SMALL.decode()) * 3
        assert a.cmd(three)[1].split()[1:3] == [b"NO", b"[OVERQUOTA]"]
        assert a.cmd("STATUS INBOX (MESSAGES)")[0] == [b"* STATUS INBOX (MESSAGES 0)"]
        done = a.cmd("APPEND INBOX" + " {%d+}\r\n%s" % (len(SMALL), SMALL.decode()) * 2)[1]
        assert re.match(rb"\S+ OK \[APPENDUID \d+ 1:2\]", done), done
        a.close()

    try:
        await trio.to_thread.run_sync(scenario)
    finally:
        await gateway.stop()
