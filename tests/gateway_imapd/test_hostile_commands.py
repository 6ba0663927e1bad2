"""Issue 14, item 2: one command must not freeze everyone. A CPU-heavy SEARCH in one session
runs in slices: a NOOP from another account's session is answered before it finishes (order
of events, not timings); past gateway.limits.command_budget the command answers NO [LIMIT];
LIST against a long name with a pattern that made the old regex backtrack answers at once."""

from __future__ import annotations

import re
import select
import subprocess
import sys

import pytest
import trio

from .conftest import GatewayHandle, message
from .test_condstore import Raw

MESSAGES = 250   # one store chunk: the loop over them has no await of its own
# Thousands of keys, all true, so every key is evaluated against every message (~35 KB line, 6,000 tokens);
# flag keys, so the store is not even read: the work is pure evaluation.
HOSTILE_SEARCH = "SEARCH " + " ".join(f"NOT KEYWORD k{n}" for n in range(2000))


def _fill(handle) -> None:
    client = handle.imaplib()
    for n in range(MESSAGES):
        client.append("INBOX", None, None, message(n, body="some body text " * 50))
    client.logout()


@pytest.fixture
async def tight_gateway(dovecot, tmp_path, nursery):
    user, password = dovecot.add_user()
    handle = GatewayHandle(dovecot, tmp_path, user, password, limits={"command_budget": "50ms"})
    await handle.start(nursery)
    yield handle
    await handle.stop()


# The other account's client runs in its own process: a client thread in the gateway's own
# process could slip its NOOP in while the server thread waits for the GIL between a1 and a2.
OTHER_CLIENT = """
import socket, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sock = socket.create_connection(("127.0.0.1", port), timeout=60)
file = sock.makefile("rb")
file.readline()
sock.sendall(b'b1 LOGIN "%s" "%s"\\r\\n' % (user.encode(), password.encode()))
while not file.readline().startswith(b"b1 "):
    pass
print("ready", flush=True)
sys.stdin.readline()
sock.sendall(b"b2 NOOP\\r\\n")
while not (line := file.readline()).startswith(b"b2 "):
    pass
print(line.decode().strip(), flush=True)
"""


async def test_noop_of_another_account_is_answered_while_a_heavy_search_runs(gateway):
    await trio.to_thread.run_sync(_fill, gateway)
    other_user, other_password = gateway.dovecot.add_user()

    def scenario():
        other = subprocess.Popen([sys.executable, "-c", OTHER_CLIENT, str(gateway.port), other_user,
                                  other_password], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        assert other.stdout.readline() == "ready\n"
        hostile = Raw(gateway.port, gateway.user, gateway.password)
        assert hostile.cmd("SELECT INBOX")[1].startswith(b"t2 OK")
        order: list[str] = []
        # Two heavy SEARCHes pipelined: when a1's reply arrives, a2 has long been read and the
        # server is working on it (no await between the two in the old code).
        line = HOSTILE_SEARCH.encode() + b"\r\n"
        hostile.sock.sendall(b"a1 " + line + b"a2 " + line)
        while not (reply := hostile.file.readline()).startswith(b"a1 "):
            pass
        assert reply.startswith(b"a1 OK"), reply
        other.stdin.write("go\n")
        other.stdin.flush()
        done = other.stdout.readline().split()
        # Whatever a2 has sent by now is in A's socket: nothing else is ever sent to A.
        search_done_first = bool(select.select([hostile.sock], [], [], 0)[0])
        order.append("noop " + done[1])
        while not (reply := hostile.file.readline()).startswith(b"a2 "):
            pass
        order.insert(0 if search_done_first else len(order), "search " + reply.split()[1].decode())
        hostile.close()
        other.wait(timeout=60)
        return order

    assert await trio.to_thread.run_sync(scenario) == ["noop OK", "search OK"]


async def test_a_command_past_its_budget_answers_no_limit(tight_gateway):
    await trio.to_thread.run_sync(_fill, tight_gateway)

    def run():
        client = Raw(tight_gateway.port, tight_gateway.user, tight_gateway.password)
        client.cmd("SELECT INBOX")
        lines, done = client.cmd(HOSTILE_SEARCH)
        after = client.cmd("NOOP")[1]   # the session goes on
        client.close()
        return lines, done, after

    lines, done, after = await trio.to_thread.run_sync(run)
    assert (lines, done, after) == ([], b"t3 NO [LIMIT] Command took too long and was stopped.",
                                    b"t4 OK NOOP completed.")


async def test_list_with_a_backtracking_pattern_answers(gateway):
    name = "d" * 74 + "y"

    def run():
        client = Raw(gateway.port, gateway.user, gateway.password)
        assert re.fullmatch(rb"t2 OK \[MAILBOXID \(M[A-Za-z0-9_-]{20}\)\] CREATE completed\.",
                            client.cmd(f"CREATE {name}")[1])
        replies = [client.cmd('LIST "" "*d*d*d*d*d*d*x"'), client.cmd('LIST "" "*d*d*d*d*d*d*y"')]
        client.close()
        return replies

    assert await trio.to_thread.run_sync(run) == [
        ([], b"t3 OK LIST completed."),
        ([b'* LIST (\\HasNoChildren) "/" ' + name.encode()], b"t4 OK LIST completed."),
    ]
