"""`mailproxy gateway migrate`: a client that synced against the SQLite store sees no change
after the store moved to PostgreSQL (same UIDVALIDITY, UIDs, flags, MODSEQs, SAVEDATEs,
MAILBOXIDs and EMAILIDs; QRESYNC gives nothing new; the fetcher brings nothing back). Real
gateway, Dovecot, PostgreSQL, CLI process."""

from __future__ import annotations

import datetime as dt
import re
import signal
import sqlite3
import subprocess
import sys

import psycopg
import trio

from proxy.store import FlagMode, IngestItem, open_store
from proxy.store.migrate import TABLES
from support.polling import wait_for

from .conftest import GatewayHandle, message
from .test_condstore import Raw

MAILBOXES = ("INBOX", "Work", "Sent")


def state(client: Raw) -> dict:
    """What a synced client knows: per mailbox STATUS and every message's UID, FLAGS, MODSEQ
    (without \\Recent: session state, RFC 3501 2.3.2, not kept by any store)."""
    out = {}
    for name in MAILBOXES:
        status = client.cmd(f"STATUS {name} (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ "
                            "MAILBOXID)")[0]   # OBJECTID (RFC 8474): ids stay
        assert client.cmd(f"EXAMINE {name}")[1].split()[1] == b"OK"
        fetched = client.cmd("UID FETCH 1:* (FLAGS MODSEQ SAVEDATE EMAILID)")[0]
        out[name] = (status, sorted(re.sub(rb"^\* \d+ ", b"", line).replace(b"\\Recent", b"")
                                    .replace(b"( ", b"(").replace(b" )", b")") for line in fetched))
    out["subscriptions"] = client.cmd('LSUB "" "*"')[0]
    return out


def migrate(source, target, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", "gateway", "migrate", "--from",
                           str(source), "--to", target, *extra],
                          capture_output=True, text=True, timeout=120)


async def test_client_sees_no_change_after_migration(dovecot, tmp_path, nursery, pg_dsn):
    user, password = dovecot.add_user()
    for n in range(6):
        dovecot.deliver(user, message(n))
    sqlite = GatewayHandle(dovecot, tmp_path, user, password)
    await sqlite.start(nursery)

    def use_it() -> tuple[dict, int, int]:
        client = Raw(sqlite.port, user, password)
        assert client.cmd("ENABLE QRESYNC")[1].split()[1] == b"OK"
        assert client.cmd("CREATE Work")[1].split()[1] == b"OK"
        assert client.cmd("SELECT INBOX")[1].split()[1] == b"OK"
        for command in ("STORE 1:2 +FLAGS (\\Seen)", "STORE 3 +FLAGS ($Work \\Flagged)",
                        "MOVE 4 Work", "STORE 1 +FLAGS (\\Deleted)", "EXPUNGE",
                        "SUBSCRIBE Work", "UNSUBSCRIBE Junk", "SUBSCRIBE Gone",
                        'APPEND Sent (\\Seen) {23}\r\nSubject: sent\r\n\r\nhello'):
            if command.startswith("APPEND"):
                head, literal = command.split("\r\n", 1)
                client.sock.sendall(f"x {head}\r\n".encode())
                assert client.file.readline().startswith(b"+")
                client.sock.sendall(literal.encode() + b"\r\n")
                assert client.file.readline().startswith(b"x OK")
                continue
            assert client.cmd(command)[1].split()[1] == b"OK", command
        lines = client.cmd("SELECT INBOX")[0]
        uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(lines)).group(1))
        modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(lines)).group(1))
        seen = state(client)
        client.close()
        return seen, uidvalidity, modseq

    before, uidvalidity, modseq = await trio.to_thread.run_sync(use_it)
    await sqlite.stop()
    db = tmp_path / "gateway.db"

    done = await trio.to_thread.run_sync(migrate, db, pg_dsn)
    assert done.returncode == 0, done.stderr
    assert re.match(r"migrated .*gateway\.db to postgresql://mailproxy@.*: 1 accounts, "
                    r"7 mailboxes, 7 subscriptions, 6 bodies, 6 messages, 6 uidls, 14 changes", done.stdout)
    assert "password" not in done.stdout and pg_dsn not in done.stdout
    again = await trio.to_thread.run_sync(migrate, db, pg_dsn)    # resuming a finished copy
    assert again.returncode == 0 and again.stdout == done.stdout, again.stderr

    # Another store into the same target is refused: it already holds accounts.
    other = tmp_path / "other"
    other.mkdir()
    other_gateway = GatewayHandle(dovecot, other, user, password)
    await other_gateway.start(nursery)
    await other_gateway.stop()
    refused = await trio.to_thread.run_sync(migrate, other / "gateway.db", pg_dsn)
    assert refused.returncode == 1
    assert "the target already holds gateway accounts" in refused.stderr

    moved = GatewayHandle(dovecot, tmp_path, user, password, store=pg_dsn)
    await moved.start(nursery)

    def check() -> None:
        client = Raw(moved.port, user, password)
        assert client.cmd("ENABLE QRESYNC")[1].split()[1] == b"OK"
        lines, done = client.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq}))")
        assert done.split()[1] == b"OK", done
        assert [x for x in lines if b"VANISHED" in x or b"FETCH" in x] == [], lines
        assert state(client) == before
        client.close()

    await trio.to_thread.run_sync(check)
    await moved.stop()


def rows(pg_dsn: str, sql: str) -> list:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(sql).fetchall()


async def test_migrate_killed_mid_copy_then_run_again_copies_exactly(tmp_path, pg_dsn):
    """SIGKILL of `gateway migrate` in the middle of a table, then a second run: the target
    holds exactly the source's rows (each batch is one transaction; the run resumes). The test
    holds the copy in the middle of the change log by keeping one of its ids in an open
    transaction of its own (the migration's batch with that id waits for it)."""
    db = tmp_path / "big.db"
    source = await open_store(str(db))
    account = await source.ensure_account("up", "alice")
    when = dt.datetime(2024, 5, 17, 10, 30, tzinfo=dt.timezone.utc)
    items = [IngestItem(f"u{n}", message(n), when, None, b"sort %d" % n, digest=b"d%d" % n)
             for n in range(1500)]
    for start in range(0, len(items), 500):
        await source.ingest_many(account.id, items[start:start + 500])
    inbox = await source.get_mailbox(account.id, "INBOX")
    for uid in range(1, 1501, 3):     # one change-log row per call: a long log
        await source.store_flags(inbox.id, [uid], ["\\Seen"], FlagMode.ADD)
    await source.expunge(inbox.id, list(range(2, 1501, 7)))
    await source.record_sync(account.id, None)
    await source.record_sync(account.id, "unreachable: connection refused")
    await source.close()
    await (await open_store(pg_dsn)).close()     # the schema, so the test can hold a row

    def kill_mid_copy() -> int:
        holder = psycopg.connect(pg_dsn)
        holder.execute("INSERT INTO changes(id, account_id, mailbox_id, modseq, kind, uid, "
                       "origin) VALUES (1200, 0, 0, 0, 'append', 0, 'test')")   # not committed
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "gateway", "migrate", "--from",
                                 str(db), "--to", pg_dsn], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            def copied_up_to_the_held_row() -> bool:
                assert proc.poll() is None, rows(
                    pg_dsn, "SELECT (SELECT count(*) FROM changes), (SELECT count(*) FROM bodies)")
                return rows(pg_dsn, "SELECT count(*) FROM changes") == [(1000,)]

            wait_for(copied_up_to_the_held_row, "the migration to copy 1,000 changes")
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(10)
            holder.rollback()
            holder.close()
        return len(rows(pg_dsn, "SELECT id FROM changes"))

    assert await trio.to_thread.run_sync(kill_mid_copy) == 1000
    assert rows(pg_dsn, "SELECT 1 FROM meta WHERE key = 'migration_done'") == []
    done = await trio.to_thread.run_sync(migrate, db, pg_dsn)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as lite:
        counts = {t.name: lite.execute(f"SELECT count(*) FROM {t.name}").fetchone()[0]
                  for t in TABLES}
        assert done.stdout.endswith(", ".join(f"{n} {t}" for t, n in counts.items()) + "\n")
        assert counts["changes"] > 1500
        assert lite.execute("SELECT usage_messages FROM accounts").fetchall() == [(1500 - 215,)]
        for table, columns in (("accounts", "id, upstream, last_uidvalidity, last_sync_at, "
                                             "last_error, last_error_at, usage_bytes, "
                                             "usage_messages"),
                               ("mailboxes", "id, name, uidvalidity, uidnext, highest_modseq"),
                               ("bodies", "id, account_id, size, data, sort_fields"),
                               ("messages", "id, mailbox_id, uid, flags, modseq, body_id, "
                                            "pop3_uidl"),
                               ("uidls", "account_id, uidl, fetched_at, digest"),
                               ("changes", "id, mailbox_id, modseq, kind, uid")):
            want = lite.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2").fetchall()
            got = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                   for row in rows(pg_dsn, f"SELECT {columns} FROM {table} ORDER BY 1, 2")]
            assert got == want, table
        # the secret the digests are keyed with (sync_identity.py) goes with them
        [key] = lite.execute("SELECT value FROM meta WHERE key = 'uidl_digest_key'").fetchall()
        assert [(bytes(v),) for v, in rows(
            pg_dsn, "SELECT value FROM meta WHERE key = 'uidl_digest_key'")] == [key]
    assert rows(pg_dsn, "SELECT value FROM meta WHERE key = 'migration_done'") == [(b"yes",)]
