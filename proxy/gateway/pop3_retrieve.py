"""A sync's downloads: RETR the messages a sync wants from a POP3 upstream and hand each
complete body to the store's batches (`ingest_batches.Ingest`), within the sync's time budget.

Theory of operation: `fetch` runs `retrieve` beside the ingest's commit task. `retrieve` keeps
a window of RETRs in flight when the server offers PIPELINING (RFC 2449 6.6), trusts a body
only once the reply after it is framed right (RFC 1939 3: a line "." not dot-stuffed ends a
body early), and keys a message without a usable UIDL by the sha256 of its body
(`DIGEST_PREFIX`). `SyncBudget` (``gateway.limits.sync_budget``) ends a sync that runs too
long: no RETR past it, and once the sync stored a message, every wait for the upstream is cut at
its end (`pop3_client.SyncCut`), so a server answering each reply just under its timeout holds
the account's sync lock for the budget, not for N x timeout, while each sync still takes the
mailbox at least one message further.
"""

from __future__ import annotations

import hashlib
import logging
import math

import trio

from .. import logs
from ..pop3 import writer
from ..session.failures import Failure
from ..session.upstream import UpstreamError
from ..store import Store
from ._parts import MimeLimits
from .ingest_batches import Ingest, ProgressCallback, StoredCallback
from .pop3_client import Pop3Client, SyncCut
from .quota import IngestGate
from .sync_identity import Identities, Placed
from .workers import Workers

__all__ = ["DIGEST_PREFIX", "PIPELINE_WINDOW", "SyncBudget", "digest_of", "fetch"]

PIPELINE_WINDOW = 16                # RETR/DELE commands in flight with PIPELINING (RFC 2449 6.6)
DIGEST_PREFIX = "sha256:"
DIGEST_INLINE = 256 * 1024          # bytes: a bigger body is hashed in a thread (~5 ms per MB;
                                    # hashlib lets go of the GIL), not on the event loop


async def digest_of(body: bytes) -> str:
    """The synthetic UIDL of a message keyed by its content: "sha256:<hex>"."""
    if len(body) <= DIGEST_INLINE:
        return DIGEST_PREFIX + hashlib.sha256(body).hexdigest()
    return DIGEST_PREFIX + await trio.to_thread.run_sync(_hexdigest, body)


def _hexdigest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class SyncBudget:
    """A sync's time (``gateway.limits.sync_budget``) from its start, on trio's clock."""

    def __init__(self, seconds: float):
        self.end = trio.current_time() + seconds
        self.reached: int | None = None   # the message number last dealt with (stored, skipped)

    @property
    def spent(self) -> bool:
        return trio.current_time() >= self.end

    def arm(self, client: Pop3Client) -> None:
        """The sync made progress: from now on the budget's end cuts any wait (SyncCut)."""
        client.cut_at = self.end

    @staticmethod
    def disarm(client: Pop3Client) -> None:
        """A step that must be waited for (QUIT, DELE's first window): only the reply limits."""
        client.cut_at = math.inf


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    """The one real error of a nursery (UpstreamError, StoreError...), not an ExceptionGroup."""
    real = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
    return real[0] if len(real) == 1 else group


async def fetch(client: Pop3Client, store: Store, account_id: int,
                wanted: list[tuple[int, str | None]], known: set[str],
                progress: ProgressCallback | None, limits: MimeLimits,
                gate: IngestGate | None, workers: Workers, failed: set[str], budget: SyncBudget,
                identities: Identities, on_stored: StoredCallback | None = None,
                ) -> tuple[Ingest, dict[str, int], bool | None]:
    """RETR and commit `wanted`: (the ingest, digest-UIDL -> number, the budget's cut as
    `retrieve` says). On an UpstreamError the complete bodies already received are committed
    before it propagates; a cancelled sync loses at most the uncommitted batches. `failed` gets
    the UIDLs of messages too big, or whose RETR timed out."""
    send, receive = trio.open_memory_channel(0)
    ingest = Ingest(store, account_id, progress, len(wanted), send, limits, gate, workers,
                    on_stored, identities.key)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ingest.commit_loop, receive)
            async with send:
                try:
                    digests, cut = await retrieve(client, wanted, ingest, known, failed, budget,
                                                  identities)
                finally:
                    await ingest.flush()
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None
    return ingest, digests, cut


async def retrieve(client: Pop3Client, wanted: list[tuple[int, str | None]], ingest: Ingest,
                   known: set[str], failed: set[str], budget: SyncBudget,
                   identities: Identities) -> tuple[dict[str, int], bool | None]:
    """RETR `wanted` (a window of them in flight with PIPELINING); returns digest-UIDL -> number
    for digest mode, and the budget's cut: None (all of `wanted` asked), False (it ran out, no
    RETR was sent after it, the session is clean) or True (it cut a wait, maybe mid-reply: the
    connection must be dropped without QUIT, so no DELE of the session takes effect). Only
    complete bodies are handed to `ingest`: each one once the reply after it was framed right
    (a server that does not dot-stuff a line "." ends a body early, RFC 1939 3, and what follows
    breaks the framing: that body is cut, never stored, where it would be kept for good and its
    whole upstream copy DELEd); the last one once a NOOP after it is answered. A body whose
    UIDL was reused or renamed is placed by its digest (`sync_identity`).

    The budget: once spent, no RETR is sent; once a body was handed to `ingest`, the budget's
    end also cuts the wait in progress (`SyncBudget.arm`). So a sync ends at its budget, or when
    its first message is stored if that comes later (within the reply limits): each sync takes
    at least one message further, however slow the server, and a big first download completes
    over several polls."""
    window = PIPELINE_WINDOW if client.pipelining else 1
    queue = iter(wanted)
    in_flight: list[tuple[int, str | None]] = []
    digests: dict[str, int] = {}
    # the last body (number, uidl, body, digest, reused), until the framing after it holds
    held: tuple[int, str, bytes, bytes | None, bool] | None = None
    unproven = False   # the last body was placed as a stored message before its framing held
    cut: bool | None = None
    started = False
    has_digests: bool | None = None

    def digest_keyed() -> bool:
        """Does the account have mail keyed by digest (`pop3_listing`: a UIDL shared by several
        messages keys each by digest; once no longer shared, the UIDL names one of them)?"""
        nonlocal has_digests
        if has_digests is None:   # (once per sync, and only when a new message comes)
            has_digests = any(key.startswith(DIGEST_PREFIX) for key in known)
        return has_digests

    async def refill() -> None:
        nonlocal cut
        if in_flight and len(in_flight) > window - 4:   # top up in small bursts: fewer writes
            return
        if started and budget.spent:   # (the first RETRs are sent anyway: progress)
            if cut is None and next(queue, None) is not None:
                cut = False
            return
        batch = []
        while len(in_flight) < window and (item := next(queue, None)) is not None:
            in_flight.append(item)
            batch.append(writer.command(b"RETR", b"%d" % item[0]))
        if batch:
            await client.send(b"".join(batch), multiline=True, count=len(batch))

    await refill()
    started = True
    try:
        while in_flight:
            number, uidl = in_flight.pop(0)
            try:
                line = await client.status(f"RETR {number}")
                unproven = False
                if held is not None:
                    await ingest.add(*held[1:])
                    budget.reached, held = held[0], None
                    budget.arm(client)
                body = await client.body(f"RETR {number}") if line.ok else None
            except UpstreamError as exc:   # (the sync fails; the next ones pass this message over)
                if exc.failure is Failure.TIMEOUT and uidl is not None:
                    failed.add(uidl)
                raise
            if body is None:   # refused or too big: dealt with (a body to store: once stored)
                budget.reached = number
            if not line.ok:
                logs.event("gateway_fetch_retr_refused", logging.WARNING, msg=number,
                           text=logs.sanitize(line.text))
                ingest.skip("retr_refused")
            elif body is None:
                logs.event("gateway_fetch_message_too_big", logging.WARNING, msg=number,
                           max_message_bytes=client.limits.max_body)
                ingest.skip("too_big")   # left upstream, never DELEd: it was not stored
                if uidl is not None:
                    failed.add(uidl)
            else:
                if uidl is None or digest_keyed():
                    digest = await digest_of(body)
                    # (or a UIDL no longer shared, its message stored by digest: the same one)
                    if uidl is None or (uidl not in known and digest in known):
                        uidl = digest
                        digests.setdefault(uidl, number)
                placed, content = Placed.NEW, None
                if not uidl.startswith(DIGEST_PREFIX) and identities.wants(uidl, known):
                    # (a UIDL reused, RFC 1939 7, or renamed)
                    content = await identities.digest(body)
                    placed = identities.place(uidl, content)
                if placed is Placed.STORED or (uidl in known and placed is Placed.NEW):
                    ingest.skip()
                    budget.reached = number
                    unproven = placed is Placed.STORED
                else:
                    known.add(uidl)
                    held = (number, uidl, body, content, placed is Placed.REUSED)
            await refill()
        if held is not None or unproven:   # the reply after it is a NOOP's (RFC 1939 5): the
            # rest of a body cut short breaks its framing, whether buffered already or arriving
            # late (QUIT's reply broke instead, and that failure does not fail the sync: the cut
            # body stayed)
            await client.send(writer.command(b"NOOP"))
            await client.status("NOOP after the last RETR (a line '.' not dot-stuffed?)")
            unproven = False
            if held is not None:
                await ingest.add(*held[1:])
                budget.reached = held[0]
    except (SyncCut, UpstreamError) as exc:
        # (the body held, if any, was not framed yet: the next sync asks again; nor was the one
        # placed as a stored message, if any: not recorded)
        if unproven:
            identities.recorded.pop()
        if isinstance(exc, UpstreamError):
            raise
        return digests, True
    return digests, cut
