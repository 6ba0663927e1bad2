"""Shared helpers for the gateway tests: a mixed-MIME corpus, configs, an upstream view via poplib."""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
import poplib
import random
from email.message import EmailMessage

import pytest
import yaml

from proxy import config as config_mod
from proxy.store import open_store

STDLIB_MESSAGES = sorted(
    (pathlib.Path(__import__("test.test_email", fromlist=["x"]).__path__[0]) / "data").glob("msg_*.txt"))
_WORDS = ("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega report meeting "
          "invoice draft note budget weekly").split()


def generated_message(rng: random.Random, n: int, size: int) -> bytes:
    """A multipart/mixed message of about `size` bytes: text, HTML alternative, binary attachment."""
    msg = EmailMessage()
    msg["From"] = f"Sender {n} <sender{n}@example.org>"
    msg["To"] = "rcpt@example.com"
    msg["Subject"] = f"{rng.choice(_WORDS)} {n} \u00e9t\u00e9"
    msg["Date"] = f"Mon, {1 + n % 28:02d} Jan 2024 10:{n % 60:02d}:00 +0100"
    msg["Message-ID"] = f"<gen-{n}-{rng.getrandbits(32)}@example.org>"
    text = " ".join(rng.choice(_WORDS) for _ in range(size // 40)) + "\n.leading dot line\n"
    msg.set_content(text)
    msg.add_alternative(f"<html><body><p>{text[:2000]}</p></body></html>", subtype="html")
    blob = rng.randbytes(max(size // 2, 1000))
    msg.add_attachment(blob, maintype="application", subtype="octet-stream", filename=f"f{n}.bin")
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def corpus(count: int, seed: int = 6) -> list[bytes]:
    """`count` messages: the stdlib's email test messages, then generated 5-50 KB ones."""
    rng = random.Random(seed)
    out = [p.read_bytes() for p in STDLIB_MESSAGES][:count]
    while len(out) < count:
        out.append(generated_message(rng, len(out), rng.randint(5_000, 50_000)))
    return out


def config_dict(pop3_port: int, store: str, retention: str = "keep", key_file: str | None = None,
                host: str = "127.0.0.1", tls: str = "none", ca_file: str | None = None) -> dict:
    gateway = {"store": store, "upstream_retention": retention}
    if key_file:
        gateway["key_file"] = key_file
    upstream = {"host": host, "pop3": {"port": pop3_port, "tls": tls}}
    if ca_file:
        upstream["ca_file"] = ca_file
    return {
        "listeners": [],
        "upstreams": {"dc": upstream},
        "routes": [{"match": "*", "upstream": "dc"}],
        "gateway": gateway,
    }


def tls_dovecot(dovecot_factory, tmp_path: pathlib.Path):
    """A Dovecot serving TLS with a certificate for localhost/127.0.0.1 from a test CA, and one
    user holding one message: (server, user, password, the CA's PEM file)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    server = dovecot_factory(tls=(cert_pem, key_pem))
    name, password = server.add_user()
    server.deliver(name, b"Subject: over TLS\r\n\r\nsecret\r\n")
    return server, name, password, ca_pem


def make_config(*args, **kwargs) -> config_mod.Config:
    return config_mod.loads(yaml.safe_dump(config_dict(*args, **kwargs)))


def upstream_messages(host: str, port: int, user: str, password: str) -> dict[str, bytes]:
    """UIDL -> body exactly as the upstream's RETR gives it, via the stdlib's poplib."""
    poplib._MAXLINE = 1 << 20   # the stdlib's 2048 is too small for some real mail
    pop = poplib.POP3(host, port, timeout=30)
    try:
        pop.user(user)
        pop.pass_(password)
        out = {}
        for entry in pop.uidl()[1]:
            number, uidl = entry.split()
            lines = pop.retr(int(number))[1]
            out[uidl.decode()] = b"".join(line + b"\r\n" for line in lines)
        return out
    finally:
        pop.quit()


def upstream_count(host: str, port: int, user: str, password: str) -> int:
    pop = poplib.POP3(host, port, timeout=30)
    try:
        pop.user(user)
        pop.pass_(password)
        return pop.stat()[0]
    finally:
        pop.quit()


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def stored(store, user: str, upstream: str = "dc") -> dict[str, tuple[int, bytes]]:
    """UIDL -> (UID, body) of the INBOX messages in the store."""
    account = await store.ensure_account(upstream, user)
    inbox = await store.get_mailbox(account.id, "INBOX")
    out = {}
    for meta in await store.messages(inbox.id):
        assert meta.pop3_uidl not in out, f"duplicate UIDL {meta.pop3_uidl}"
        out[meta.pop3_uidl] = (meta.uid, await store.body(meta))
    return out


@contextlib.contextmanager
def sqlite_at_schema(path: str, version: int):
    """An SQLite store file at schema `version` (its first `version` migration steps), in one
    transaction with whatever rows the `with` body adds as that schema had them."""
    from proxy.store import _schema

    db = _schema.connect(path)
    try:
        with _schema.transaction(db):
            db.execute("CREATE TABLE schema_version(version INTEGER NOT NULL)")
            db.execute("INSERT INTO schema_version VALUES (?)", (version,))
            for step in _schema.MIGRATIONS[:version]:
                step(db)
            yield db
    finally:
        db.close()


@contextlib.contextmanager
def postgres_at_schema(dsn: str, version: int):
    """The PostgreSQL database `dsn` at schema `version`, as `sqlite_at_schema`."""
    import psycopg

    from proxy.store import _pg_schema

    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE schema_version(version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (%s)", (version,))
        for step in _pg_schema.MIGRATIONS[:version]:
            step(conn)
        yield conn


@contextlib.asynccontextmanager
async def migrated_with_one_account(place: str, version: int):
    """The store at `place` (an SQLite path or a `postgresql://` URL) made at schema `version`
    with one account ('up', 'old'), then opened (so migrated to the current schema)."""
    if place.startswith("postgresql://"):
        with postgres_at_schema(place, version) as conn:
            conn.execute("INSERT INTO accounts(id, upstream, username) VALUES (1, 'up', 'old')")
    else:
        with sqlite_at_schema(place, version) as db:
            db.execute("INSERT INTO accounts(upstream, user) VALUES ('up', 'old')")
    store = await open_store(place)
    try:
        yield store
    finally:
        await store.close()


async def check_migration_4_sync_status(place: str) -> None:
    """Issue 19: a store of schema 3 keeps its accounts; their sync status starts empty."""
    async with migrated_with_one_account(place, 3) as s:
        [summary] = await s.account_summaries()
        assert (summary.account.user, summary.last_sync, summary.last_error,
                summary.last_error_at) == ("old", None, None, None)
        await s.record_sync(summary.account.id, "store: disk full")
        assert (await s.account_summaries())[0].last_error == "store: disk full"
