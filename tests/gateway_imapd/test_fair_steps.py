"""One user's big command never holds the event loop for the others (DESIGN.md, "the event loop
is shared by every user"): the work after the store committed a STORE 1:* (and an EXPUNGE of
them all) runs in slices that yield (`CommandBudget.share`). Each test holds the heavy command
at its first yield with a trio event and shows, by order of events (no timings), that the
command is still in progress (its tagged reply not sent) while another account's NOOP is
answered and another session of the same account already sees the change; then lets it finish
and checks its answer byte for byte."""

from __future__ import annotations

import select
import threading
import tracemalloc

import pytest
import trio
import trio.testing

from proxy.gateway.imapd import _append, _sort, _view
from proxy.gateway.imapd._budget import CommandBudget
from proxy.imap._tokens import Atom, Literal

from .conftest import GatewayHandle, message
from .test_condstore import Raw

MESSAGES = 12


@pytest.fixture
async def gateway(dovecot, tmp_path, nursery):
    user, password = dovecot.add_user()
    handle = GatewayHandle(dovecot, tmp_path, user, password)
    await handle.start(nursery)
    yield handle
    await handle.stop()


@pytest.fixture
def held(monkeypatch):
    """`CommandBudget.share`, once `held.armed`, held at its first call until `held.release`
    is set; `held.calls` counts the calls of the task held (other sessions share too)."""

    class Held:
        reached, release, calls, armed, task = trio.Event(), trio.Event(), 0, False, None

    async def share(self) -> None:
        if not Held.armed:
            return
        if Held.task is None:
            Held.task = trio.lowlevel.current_task()
        Held.calls += Held.task is trio.lowlevel.current_task()
        if not Held.reached.is_set():
            Held.reached.set()
            await Held.release.wait()

    monkeypatch.setattr(CommandBudget, "share", share)
    return Held


def _fill(gateway) -> None:
    client = gateway.imaplib()
    for n in range(MESSAGES):
        client.append("INBOX", None, None, message(n))
    client.logout()


async def _while_held(gateway, held, heavy, command: str, during) -> tuple[list[bytes], object]:
    """Send `command` on `heavy` (a Raw client), run `during()` in a thread once the command is
    held at its first yield, assert nothing of the command's answer was sent by then, release
    it; returns its answer's lines (untagged and tagged) and what `during` returned."""
    held.armed = True
    heavy.sock.sendall(b"h1 " + command.encode() + b"\r\n")
    with trio.fail_after(60):   # a bound for a broken server, not a measurement
        await held.reached.wait()
    seen = await trio.to_thread.run_sync(during)
    assert select.select([heavy.sock], [], [], 0)[0] == []   # still in progress: nothing sent
    held.release.set()

    def answer() -> list[bytes]:
        lines = []
        while not (line := heavy.file.readline().rstrip(b"\r\n")).startswith(b"h1 "):
            lines.append(line)
        return lines + [line]

    return await trio.to_thread.run_sync(answer), seen


async def _sessions(gateway, before_select=None, after_select=None):
    """With the mailbox filled: the heavy session and another of the same account, both with
    INBOX selected, a session of another account, and what `before_select(heavy)` returned."""
    await trio.to_thread.run_sync(_fill, gateway)
    other_user, other_password = gateway.dovecot.add_user()

    def open_clients():
        heavy, same = (Raw(gateway.port, gateway.user, gateway.password) for _ in range(2))
        found = before_select(heavy) if before_select else None
        for client in (heavy, same):
            assert client.cmd("SELECT INBOX")[1].startswith(b"t%d OK" % client.n)
        if after_select:
            after_select(heavy)
        return heavy, same, Raw(gateway.port, other_user, other_password), found

    return await trio.to_thread.run_sync(open_clients)


def _noops(other, same):
    """What `during` does: a NOOP of the other account, then one of the same account."""
    return lambda: (other.cmd("NOOP"), same.cmd("NOOP"))


async def test_store_of_every_message_yields_to_other_sessions(gateway, held):
    heavy, same, other, _ = await _sessions(gateway)
    during = _noops(other, same)
    lines, (other_noop, same_noop) = await _while_held(
        gateway, held, heavy, "STORE 1:* +FLAGS (\\Flagged)", during)
    fetches = [b"* %d FETCH (FLAGS (\\Flagged \\Recent))" % n for n in range(1, MESSAGES + 1)]
    assert other_noop == ([], b"t2 OK NOOP completed.")
    # the others heard of it first (an unsolicited FETCH carries the UID, as Dovecot's)
    assert same_noop == ([b"* %d FETCH (UID %d FLAGS (\\Flagged))" % (n, n)
                          for n in range(1, MESSAGES + 1)], b"t3 OK NOOP completed.")
    assert lines == fetches + [b"h1 OK STORE completed."]
    assert held.calls >= MESSAGES   # one yield point per message at least
    await trio.to_thread.run_sync(lambda: [c.close() for c in (heavy, same, other)])


async def test_expunge_of_every_message_yields_to_other_sessions(gateway, held, monkeypatch):
    monkeypatch.setattr(_view, "EXPUNGE_BATCH", 5)

    def deleted(heavy):
        assert heavy.cmd("STORE 1:* +FLAGS.SILENT (\\Deleted)")[1] == b"t3 OK STORE completed."

    heavy, same, other, _ = await _sessions(gateway, after_select=deleted)
    during = _noops(other, same)
    lines, (other_noop, same_noop) = await _while_held(gateway, held, heavy, "EXPUNGE", during)
    expunges = [b"* %d EXPUNGE" % n for n in range(MESSAGES, 0, -1)]   # highest first
    assert other_noop == ([], b"t2 OK NOOP completed.")
    assert same_noop[1] == b"t3 OK NOOP completed."
    assert same_noop[0][-MESSAGES:] == expunges   # after the FETCH FLAGS of the STORE
    assert lines == expunges + [b"h1 OK EXPUNGE completed."]
    assert held.calls == 3   # 12 messages in batches of 5: a yield point after each batch
    await trio.to_thread.run_sync(lambda: [c.close() for c in (heavy, same, other)])


async def test_move_of_every_message_yields_to_other_sessions(gateway, held, monkeypatch):
    monkeypatch.setattr(_view, "EXPUNGE_BATCH", 5)

    def target(heavy):
        assert heavy.cmd("CREATE Moved")[1].startswith(b"t2 OK")
        return heavy.cmd("STATUS Moved (UIDVALIDITY)")[0][0]

    heavy, same, other, status = await _sessions(gateway, before_select=target)
    uidvalidity = int(status.split(b"UIDVALIDITY ")[1].rstrip(b")"))
    during = _noops(other, same)
    lines, (other_noop, same_noop) = await _while_held(gateway, held, heavy, "MOVE 1:* Moved",
                                                       during)
    expunges = [b"* %d EXPUNGE" % n for n in range(MESSAGES, 0, -1)]   # highest first
    assert other_noop == ([], b"t2 OK NOOP completed.")
    assert same_noop == (expunges, b"t3 OK NOOP completed.")
    assert lines == [b"* OK [COPYUID %d 1:%d 1:%d] Moved UIDs." % (uidvalidity, MESSAGES, MESSAGES)
                     ] + expunges + [b"h1 OK MOVE completed."]
    assert held.calls == 3   # 12 messages in batches of 5: a yield point after each batch
    await trio.to_thread.run_sync(lambda: [c.close() for c in (heavy, same, other)])


@pytest.mark.parametrize("changes", [["STORE 1:* +FLAGS.SILENT (\\Flagged)"],
                                     ["STORE 1:* +FLAGS.SILENT (\\Deleted)", "EXPUNGE"]])
async def test_other_session_applies_a_big_change_in_slices(gateway, held, monkeypatch, changes):
    """Another session of the same account applies the heavy session's change to every message
    in slices (`SelectedView.update_slices`): held at its first yield, its NOOP has sent
    nothing while the heavy session and another account are answered; then it gets the
    change's lines in order (EXPUNGE highest first, RFC 3501 7.4.1), byte for byte."""
    monkeypatch.setattr(_view, "UPDATE_SLICE", 5)
    monkeypatch.setattr(_view, "EXPUNGE_BATCH", 5)
    heavy, same, other, _ = await _sessions(gateway)

    def change():
        for command in changes:
            assert heavy.cmd(command)[1].startswith(b"t%d OK" % heavy.n)

    await trio.to_thread.run_sync(change)
    lines, (other_noop, heavy_noop) = await _while_held(gateway, held, same, "NOOP",
                                                        _noops(other, heavy))
    assert other_noop == ([], b"t2 OK NOOP completed.")
    assert heavy_noop == ([], b"t%d OK NOOP completed." % heavy.n)
    if len(changes) == 1:
        told = [b"* %d FETCH (UID %d FLAGS (\\Flagged))" % (n, n) for n in range(1, MESSAGES + 1)]
    else:
        told = [b"* %d EXPUNGE" % n for n in range(MESSAGES, 0, -1)]
    assert lines == told + [b"h1 OK NOOP completed."]
    # 12 flag changes folded in slices of 5 (2 pauses), then 3 parts of lines
    assert held.calls == 5
    await trio.to_thread.run_sync(lambda: [c.close() for c in (heavy, same, other)])


async def test_sort_and_thread_build_render_and_order_off_the_loop(gateway, monkeypatch):
    """Past OFF_LOOP_AT messages, SORT's and THREAD's per-message work (the sortable items,
    the order, the threads and their rendering) runs in worker threads, not on the loop."""
    await trio.to_thread.run_sync(_fill, gateway)
    monkeypatch.setattr(_sort, "OFF_LOOP_AT", MESSAGES - 1)
    loop, ran = threading.get_ident(), []

    def spy(name: str, work):
        def run(*args, **kwargs):
            ran.append((name, threading.get_ident() == loop))
            return work(*args, **kwargs)
        return run

    for name in ("_items", "_thread_answer", "sort_items"):
        monkeypatch.setattr(_sort, name, spy(name, getattr(_sort, name)))

    def run():
        client = Raw(gateway.port, gateway.user, gateway.password)
        client.cmd("SELECT INBOX")
        answers = client.cmd("SORT (REVERSE DATE) UTF-8 ALL"), client.cmd(
            "THREAD ORDEREDSUBJECT UTF-8 ALL")
        client.close()
        return answers

    numbers = range(1, MESSAGES + 1)
    assert await trio.to_thread.run_sync(run) == (
        ([b"* SORT " + b" ".join(b"%d" % n for n in reversed(numbers))], b"t3 OK SORT completed."),
        ([b"* THREAD " + b"".join(b"(%d)" % n for n in numbers)], b"t4 OK THREAD completed."))
    assert ran == [("_items", False), ("sort_items", False), ("_items", False),
                   ("_thread_answer", False)]


async def test_share_yields_once_the_slice_is_used_and_never_stops_the_command():
    budget = CommandBudget(0.0)   # past its budget at once: tick() would answer NO [LIMIT]
    budget.start()
    budget.slice_end = float("inf")
    with trio.testing.assert_no_checkpoints():
        await budget.share()
    budget.slice_end = 0.0
    with trio.testing.assert_checkpoints():
        await budget.share()
    assert budget.slice_end > 0.0   # a new slice began


def test_append_arguments_take_a_big_message_without_copying_it():
    """APPEND's grammar checks (UTF8? CATENATE? RFC 6855, 4469) looked at a message literal by
    copying and upper-casing all of it, and then copied it once more: ~330 ms of one step for a
    50 MB message. Now the literal itself is the message, and the checks allocate nothing of
    its size (memory, not time: tracemalloc's peak)."""
    body = Literal(b"Subject: big\r\n\r\n" + b"a" * (8 << 20))
    tracemalloc.start()
    try:
        parsed = _append.groups([(Atom(b"\\Seen"),), body, body])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(flags, when) for flags, when, _ in parsed] == [(["\\Seen"], None), ([], None)]
    assert parsed[0][2] is body and parsed[1][2] is body
    assert peak < 1 << 20   # one copy of the message would be 8 MB
