"""DELETE of a mailbox that other sessions are using, in the middle of their commands (RFC 3501
6.3.4, 6.4.7, 6.3.11; RFC 2180 3.3), on both stores.

The interleaving is forced, not hoped for: the real store's call that adds messages (COPY, MOVE,
APPEND) stops, before or after it runs, until another client's DELETE of the target has
completed. The store, the hub and the clients are real; only the order is chosen.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import imaplib
import sqlite3
import threading

import psycopg
import pytest
import trio

from .conftest import GatewayHandle, message

run = trio.to_thread.run_sync


class _Paused:
    """Wraps one store method: the first call stops `before` or after the real call until the
    test lets it go on (`reached` is set when it stops)."""

    def __init__(self, monkeypatch, store, name: str, before: bool) -> None:
        self.reached, self.resume = threading.Event(), threading.Event()
        real, calls = getattr(store, name), []

        async def paused(*args, **kwargs):
            first = not calls
            calls.append(name)
            if first and before:
                await self._stop()
            result = await real(*args, **kwargs)
            if first and not before:
                await self._stop()
            return result

        monkeypatch.setattr(store, name, paused)

    async def _stop(self) -> None:
        self.reached.set()
        await trio.to_thread.run_sync(self.resume.wait, abandon_on_cancel=True)


def _while_deleted(gateway, paused: _Paused, command) -> tuple:
    """Run `command()` (one client's) in a thread; once its store call has stopped, another
    client DELETEs "Target"; then let the command go on and return its reply."""
    deleter = gateway.imaplib()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reply = pool.submit(command)
        assert paused.reached.wait(30), "the store call never ran"
        assert deleter.delete("Target") == ("OK", [b"DELETE completed."])
        paused.resume.set()
        result = reply.result(timeout=60)
    assert deleter.select("Target")[0] == "NO"   # deleted, whatever the command did
    deleter.logout()
    return result


def _setup(gateway) -> imaplib.IMAP4:
    client = gateway.imaplib()
    assert client.create("Target")[0] == "OK"
    assert client.append("INBOX", None, None, message(1))[0] == "OK"
    assert client.select("INBOX")[0] == "OK"
    return client


COMMANDS = {
    "COPY": (lambda c: c.copy("1", "Target"), "copy"),
    "MOVE": (lambda c: c._simple_command("MOVE", "1", "Target"), "move"),
    "APPEND": (lambda c: c.append("Target", None, None, message(2)), "append"),
}


@pytest.mark.parametrize("verb", sorted(COMMANDS))
async def test_added_then_target_deleted_is_ok(gateway, monkeypatch, verb):
    """The store call committed, then another session deleted the target before the new
    messages were announced: the command came first, so it succeeded (as on Dovecot, where the
    commit is the command). Before, the announcement's read of the gone mailbox became the
    tagged reply `NO [NONEXISTENT] no mailbox with id N`: a MOVE said NO after its EXPUNGE."""
    command, method = COMMANDS[verb]

    def clients():
        client = _setup(gateway)
        paused = _Paused(monkeypatch, gateway.service.store, method, before=False)
        typ, data = _while_deleted(gateway, paused, lambda: command(client))
        assert typ == "OK", (typ, data)
        if verb == "MOVE":
            assert client.untagged_responses.pop("EXPUNGE") == [b"1"]
        assert client.noop()[0] == "OK"   # still selected in INBOX, served as before
        client.logout()
    await run(clients)


@pytest.mark.parametrize("verb", sorted(COMMANDS))
async def test_target_deleted_before_the_store_call_is_trycreate(gateway, monkeypatch, verb):
    """The target existed when the command looked it up, and another session deleted it before
    the store call ran: answered as a target that does not exist, NO [TRYCREATE] (RFC 3501
    6.4.7, 6.3.11; what Dovecot answers for a missing target), so the client may CREATE it and
    retry. Before: `NO [NONEXISTENT] no mailbox with id N` (the store's text, its id)."""
    command, method = COMMANDS[verb]

    def clients():
        client = _setup(gateway)
        paused = _Paused(monkeypatch, gateway.service.store, method, before=True)
        typ, data = _while_deleted(gateway, paused, lambda: command(client))
        assert (typ, data) == ("NO", [b"[TRYCREATE] Mailbox does not exist: Target"])
        assert client.select("INBOX")[1] == [b"1"]   # nothing moved, nothing lost
        client.logout()
    await run(clients)


def _read_after_delete(port: int, user: str, password: str, command: bytes) -> list[bytes]:
    """Session b SELECTs "Doomed" (one message), session a DELETEs it, then b sends `command`:
    everything b then receives until the server closes, tags cut to tag and status."""
    a = imaplib.IMAP4("127.0.0.1", port, timeout=20)
    a.login(user, password)
    assert a.create("Doomed")[0] == "OK"
    assert a.append("Doomed", None, None, message(1))[0] == "OK"
    b = imaplib.IMAP4("127.0.0.1", port, timeout=20)
    b.login(user, password)
    assert b.select("Doomed")[0] == "OK"
    assert a.delete("Doomed")[0] == "OK"
    b.send(b"x " + command + b"\r\n")
    rest = b.file.read().split(b"\r\n")   # until the server closes
    a.logout()
    return [b" ".join(line.split(b" ")[:2]) if line.startswith(b"x ") else line for line in rest]


@pytest.mark.parametrize("command", [b"FETCH 1 (BODY.PEEK[])", b"FETCH 1 (BODY[])",
                                     b"STORE 1 +FLAGS (\\Seen)", b"COPY 1 INBOX", b"EXPUNGE"])
async def test_a_command_in_a_deleted_mailbox_ends_the_session_as_on_dovecot(gateway, command):
    """The next command of a session whose selected mailbox another session deleted (reading a
    body, changing flags, copying out, expunging), beside Dovecot 2.3.19 run here: both end the
    session with an untagged BYE (RFC 2180 3.3) and serve nothing of the deleted messages. The
    details differ, and ours are the simpler: Dovecot first answers a tagged NO (STORE, COPY,
    EXPUNGE) or a FETCH response without the body (`* 1 FETCH (UID 1)`), then
    `* BYE FETCH failed: Mailbox was deleted under us`; the gateway sends only its BYE."""
    dovecot = gateway.dovecot
    user, password = dovecot.add_user()
    theirs = await run(_read_after_delete, dovecot.imap_port, user, password, command)
    ours = await run(_read_after_delete, gateway.port, gateway.user, gateway.password, command)
    assert ours == [b"* BYE IMAP session state is inconsistent, please relogin.", b""]
    assert theirs[-2].startswith(b"* BYE ") and theirs[-1] == b""
    assert not any(b"body of message" in line or b"{" in line for line in theirs + ours)


async def test_an_idle_session_on_a_deleted_mailbox_gets_bye_at_once(gateway):
    """IDLE in the mailbox another session deletes: the BYE is pushed while it idles (RFC 2180
    3.3), not left for a command the client may never send (the hub's GONE wakes the view)."""
    def clients():
        a, b = gateway.imaplib(), gateway.imaplib()
        assert a.create("Doomed")[0] == "OK"
        assert a.append("Doomed", None, None, message(1))[0] == "OK"
        assert b.select("Doomed")[0] == "OK"
        b.send(b"i IDLE\r\n")
        assert b.readline() == b"+ idling\r\n"
        assert a.delete("Doomed")[0] == "OK"
        assert b.file.read().split(b"\r\n") == [   # until the server closes: no DONE sent
            b"* BYE IMAP session state is inconsistent, please relogin.", b""]
        a.logout()
    await run(clients)


async def test_a_deleted_mailbox_is_not_kept_in_the_index(gateway):
    """The per-account index of mailbox snapshots (SELECT, STATUS) lets go of a mailbox this
    process deleted, as it does of one another process deleted: a deleted mailbox's snapshot
    (a few MB for 10,000 messages) stayed for the life of the process."""
    def clients():
        a = gateway.imaplib()
        assert a.create("Doomed")[0] == "OK"
        assert a.append("Doomed", None, None, message(1))[0] == "OK"
        assert a.select("Doomed")[0] == "OK"
        assert a.select("INBOX")[0] == "OK"
        [backend] = gateway.service._backends.values()   # the one account's
        box = backend.index.known("Doomed")
        assert box is not None and box.id in backend.index
        assert a.delete("Doomed")[0] == "OK"
        assert box.id not in backend.index and backend.index.known("Doomed") is None
        a.logout()
    await run(clients)


def _stored_bodies(store_url: str) -> int:
    """Bodies in the store, read over a connection of the test's own."""
    query = "SELECT count(*) FROM bodies"
    if store_url.startswith("postgresql"):
        with psycopg.connect(store_url, autocommit=True) as conn:
            row = conn.execute(query).fetchone()
    else:
        with contextlib.closing(sqlite3.connect(store_url)) as conn:
            row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_move_out_of_a_mailbox_deleted_meanwhile_leaves_no_body(
        dovecot, tmp_path, nursery, gateway_store, monkeypatch):
    """Session a MOVEs the one message of "Source" to "Target"; session b DELETEs "Source" after
    a's removal has begun and before its store call (forced), and b's collect runs meanwhile.
    The DELETE puts the body on the garbage list; the removal keeps it out of that collect, and
    then fails (the source is gone). Once it ends the body is garbage again and the next collect
    deletes it. Before, the removal dropped it from garbage for good: deleted mail stayed on
    disk until the next start on SQLite (on PostgreSQL until the follower's periodic sweep, set
    far off here so that only the collect can delete it)."""
    user, password = dovecot.add_user()
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=gateway_store,
                            store_ack_interval="60s", store_replica_lease="300s")
    await gateway.start(nursery)

    def clients():
        a, b = gateway.imaplib(), gateway.imaplib()
        for name in ("Source", "Target"):
            assert a.create(name)[0] == "OK"
        assert a.append("Source", None, None, message(1))[0] == "OK"
        assert a.select("Source")[0] == "OK"
        assert _stored_bodies(gateway.store_url) == 1
        paused = _Paused(monkeypatch, gateway.service.store, "move", before=True)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            moved = pool.submit(a._simple_command, "MOVE", "1", "Target")
            assert paused.reached.wait(30), "the store call never ran"
            assert b.delete("Source") == ("OK", [b"DELETE completed."])
            assert b.noop()[0] == "OK"   # its reply follows the DELETE's collect
            paused.resume.set()
            # a BYE, as any command in a mailbox deleted under it (so a collects nothing)
            with pytest.raises(imaplib.IMAP4.abort):
                moved.result(timeout=60)
        assert b.select("Target") == ("OK", [b"0"])      # nothing moved, nothing left
        assert b.noop()[0] == "OK"   # its reply follows the collect after SELECT's
        assert _stored_bodies(gateway.store_url) == 0
        b.logout()
    try:
        await run(clients)
    finally:
        await gateway.stop()


@pytest.mark.parametrize("verb", ["STORE", "EXPUNGE"])
async def test_a_change_in_a_mailbox_deleted_elsewhere_names_no_internal_id(
        gateway, monkeypatch, verb):
    """Session b DELETEs session a's selected mailbox as another process would: this process's
    hub hears of it only later (the change feed's GONE), so a's STORE (or EXPUNGE) reaches the
    store first and finds no mailbox. The answer is NO [NONEXISTENT] with a fixed text; before,
    it was the store's, naming the internal row id (`no mailbox with id N`). Once the GONE
    arrives, a's next command gets the BYE (RFC 2180 3.3)."""
    command = {"STORE": "STORE 1 +FLAGS (\\Seen)", "EXPUNGE": "EXPUNGE"}[verb]
    told: list[int] = []

    def clients():
        a, b = gateway.imaplib(), gateway.imaplib()
        assert a.create("Doomed")[0] == "OK"
        assert a.append("Doomed", None, None, message(1))[0] == "OK"
        assert a.select("Doomed")[0] == "OK"
        if verb == "EXPUNGE":
            assert a.store("1", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        [backend] = gateway.service._backends.values()   # the one account's
        # as the DELETE of another process: not heard of here yet
        monkeypatch.setattr(backend.hub, "gone", lambda box, origin=None: told.append(box))
        assert b.delete("Doomed") == ("OK", [b"DELETE completed."])
        reply = a._simple_command(*command.split(" ", 1))
        assert reply == ("NO", [b"[NONEXISTENT] Mailbox does not exist."])
        b.logout()
        return a, backend.hub
    a, hub = await run(clients)
    monkeypatch.undo()
    [mailbox_id] = told
    hub.gone(mailbox_id)   # the feed's GONE
    with pytest.raises(imaplib.IMAP4.abort, match="inconsistent"):
        await run(a.noop)
