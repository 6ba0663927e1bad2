"""QUOTA (RFC 9208) over `gateway.quota`: GETQUOTAROOT, GETQUOTA, SETQUOTA (refused), and the
`NO [OVERQUOTA]` check of APPEND and COPY.

Theory of operation: with a storage and/or message limit configured, every mailbox of an account
is in one quota root, named "User quota" as Dovecot names its default one (clients show the
name). Usage is what the account's messages hold, each copy counted (9208 5.1: STORAGE in units
of 1024 octets, rounded up as Dovecot; MESSAGE a count), read from the store when asked: one aggregate
query, no counter to drift. Without a limit configured, a mailbox has no quota root (9208 4.3.2
allows an empty QUOTAROOT).

The check before APPEND/COPY refuses what would take the account past a limit (9208 4.3: the
server MUST NOT let the command complete, `NO [OVERQUOTA]`). It is a check, then the write: two
commands running at the same moment may both pass and end slightly over the limit. MOVE within
the account changes no usage, so it is never refused. Expunging frees space at once. The POP3
fetcher applies the same limits to ingest (ingest_batches.py: what does not fit stays upstream).
"""

from __future__ import annotations

from ..quota import over
from ._args import Reply, astring, mailbox, mailbox_wire

ROOT = "User quota"
ROOT_WIRE = b'"User quota"'


def _limits(session):
    """The account's quota (`config.GatewayQuota`), or None when no limit is configured."""
    quota = session.quota
    return quota if quota is not None and quota.enabled else None


def kib(octets: int) -> int:
    """RFC 9208 5.1 units of 1024 octets, rounded up as Dovecot does (1 octet is 1 KiB used)."""
    return -(-octets // 1024)


async def check(session, add_bytes: int, add_messages: int) -> None:
    """Refuse (`NO [OVERQUOTA]`, RFC 9208 4.3) what would take the account past its quota."""
    quota = _limits(session)
    if quota is None:
        return
    if over(quota, await session.store.usage(session.account.id), add_bytes, add_messages):
        raise Reply.no("Quota exceeded (mailbox for user is full).", b"OVERQUOTA")


async def _quota_line(session, quota) -> bytes:
    usage = await session.store.usage(session.account.id)
    resources = []
    if quota.storage is not None:   # RFC 9208 5.1: units of 1024 octets (use rounded up,
        resources.append(b"STORAGE %d %d" % (kib(usage.bytes), quota.storage // 1024))   # Dovecot)
    if quota.messages is not None:   # 5.2
        resources.append(b"MESSAGE %d %d" % (usage.messages, quota.messages))
    return b"QUOTA " + ROOT_WIRE + b" (" + b" ".join(resources) + b")"


async def getquotaroot(session, cmd):
    """RFC 9208 4.3.2: the mailbox's quota roots, then each root's QUOTA."""
    if len(cmd.args) != 1:
        raise Reply.bad("GETQUOTAROOT expects a mailbox name")
    # need not exist (as Dovecot): its root if it were created
    name = mailbox(cmd.args[0], session.utf8)
    quota = _limits(session)
    if quota is None:
        session.emit(b"QUOTAROOT " + mailbox_wire(name, session.utf8))
        return None
    session.emit(b"QUOTAROOT " + mailbox_wire(name, session.utf8) + b" " + ROOT_WIRE)
    session.emit(await _quota_line(session, quota))
    return None


async def getquota(session, cmd):
    """RFC 9208 4.3.1: one root's resources."""
    if len(cmd.args) != 1:
        raise Reply.bad("GETQUOTA expects a quota root")
    quota = _limits(session)
    if quota is None or bytes(astring(cmd.args[0])) != ROOT.encode():
        raise Reply.no("Quota root does not exist.")   # no code, as Dovecot
    session.emit(await _quota_line(session, quota))
    return None


async def setquota(session, cmd):
    """RFC 9208 4.3.3: limits are the operator's (`gateway.quota`); QUOTASET is not advertised."""
    raise Reply.no("Quota is set by the administrator.", b"NOPERM")
