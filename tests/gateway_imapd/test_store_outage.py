"""The gateway's PostgreSQL goes away under load and comes back: sessions get `NO [UNAVAILABLE]`
(RFC 5530) meanwhile, never a crash or a dropped connection, and recover without a restart of
the gateway; new mail and other replicas' changes flow again (the change feed reconnects)."""

from __future__ import annotations

import socket
import threading

import trio

from .conftest import GatewayHandle, message
from .test_condstore import Raw

CLIENTS = 4


def login_reply(port: int, user: str, password: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        file = sock.makefile("rb")
        file.readline()
        sock.sendall(f'a LOGIN "{user}" "{password}"\r\n'.encode())
        while not (line := file.readline()).startswith(b"a "):
            assert line, "connection closed"
        return line[2:].rstrip()


async def test_postgres_restart_under_load(dovecot, tmp_path, nursery, postgres, pg_dsn):
    user, password = dovecot.add_user()
    for n in range(3):
        dovecot.deliver(user, message(n))
    gateway = GatewayHandle(dovecot, tmp_path, user, password, store=pg_dsn)
    await gateway.start(nursery)
    stop = threading.Event()
    answers: list[bytes] = []
    errors: list[BaseException] = []

    def load(client: Raw) -> None:
        """SELECT, then STORE/STATUS, in a loop until told to stop (SELECT again after a failed
        one, which leaves no mailbox selected); every tagged answer is kept."""
        try:
            selected, n = False, 0
            while not stop.is_set():
                n += 1
                if not selected:
                    command = "SELECT INBOX"
                else:
                    command = ("STORE 1 FLAGS (\\Seen)", "STATUS INBOX (MESSAGES)")[n % 2]
                answer = client.cmd(command)[1].split(b" ", 1)[1]
                answers.append(answer)
                if command == "SELECT INBOX":
                    selected = answer.startswith(b"OK")
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    def scenario() -> None:
        clients = [Raw(gateway.port, user, password) for _ in range(CLIENTS)]
        threads = [threading.Thread(target=load, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        postgres.stop()
        try:
            reply = login_reply(gateway.port, user, password)
            assert reply.startswith(b"NO [UNAVAILABLE]"), reply
        finally:
            postgres.start()
        stop.set()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        unavailable = [a for a in answers if a.startswith(b"NO [UNAVAILABLE]")]
        assert unavailable, "no command ran while the database was down"
        assert all(a.startswith((b"OK", b"NO [UNAVAILABLE]")) for a in answers), set(answers)
        # the same sessions, and new ones, work again
        for client in clients:
            assert client.cmd("SELECT INBOX")[1].split()[1] == b"OK"
            client.close()
        dovecot.deliver(user, message(3))       # the login's sync stores it before SELECT
        again = Raw(gateway.port, user, password)
        assert b"* 4 EXISTS" in again.cmd("SELECT INBOX")[0]
        again.close()

    await trio.to_thread.run_sync(scenario)
    await gateway.stop()
