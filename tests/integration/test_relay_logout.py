"""A client's LOGOUT answered by the relay itself (proxy/relay/imap_core.py `answer_logout`,
engine_logout.py), against a real Dovecot, on each driver: the engine's own accept (the
default), the engine with the session's task parked (engine_accept off), and the trio pumps
(`relay.engine: tasks`). The client gets BYE and the tagged OK from the proxy and the connection
closes; Dovecot still gets the LOGOUT (its "Logged out" line); the command and the session's
end are counted as before; a LOGOUT pipelined behind a command, or sent while one is in flight,
is Dovecot's to answer, in order."""

from __future__ import annotations

import imaplib
import os
import pathlib
import re
import signal
import socket

import pytest

from support.polling import wait_for
from support.proxyproc import relay_config

from .test_operations import read_until
from .test_relay_engine_login import metric

HOST = "127.0.0.1"
DRIVERS = {"engine_accept": {}, "engine_task": {"engine_accept": False},
           "tasks": {"engine": "tasks"}}


@pytest.fixture(params=list(DRIVERS))
def proxy(request, proxy_factory, dovecot):
    config = relay_config(dovecot, listeners=("imap",), allow_plaintext_auth=True)
    config["upstreams"]["main"]["health_check_interval"] = "1h"
    config["relay"] = dict(DRIVERS[request.param])
    return proxy_factory(config)


def logged_in(proxy, user) -> socket.socket:
    sock = socket.create_connection((HOST, proxy.port("imap")), timeout=30)
    read_until(sock, b"\r\n")
    sock.sendall(b"a LOGIN %s %s\r\n" % (user[0].encode(), user[1].encode()))
    assert b"\r\na OK " in b"\r\n" + read_until(sock, b"\r\n")
    return sock


def to_eof(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def down_bytes(proxy) -> float:
    return metric(proxy, "mailproxy_bytes_total", direction="upstream_to_client", protocol="imap")


def ends(proxy) -> list[str]:
    return re.findall(r"event=session_end .*", proxy.logs())


def dovecot_logged_out(dovecot, name: str) -> int:
    """Dovecot's lines for `name`'s imap sessions that ended with its LOGOUT done ("Logged
    out"; a connection closed without it logs "Connection closed")."""
    return len(re.findall(rf"imap\({re.escape(name)}\)[^\n]*: Disconnected: Logged out in=",
                          dovecot.log()))


def test_logout_is_answered_by_the_relay_and_dovecot_still_logs_out(proxy, dovecot, user):
    sock = logged_in(proxy, user)
    sock.sendall(b"b SELECT INBOX\r\n")
    selected = read_until(sock, b"\r\nb OK ")
    selected += read_until(sock, b"\r\n") if not selected.endswith(b"\r\n") else b""
    sock.sendall(b"c LOGOUT\r\n")
    assert to_eof(sock) == b"* BYE Logging out\r\nc OK Logout completed.\r\n"   # then closed
    sock.close()
    wait_for(lambda: len(ends(proxy)) == 1, what="the session_end line")
    assert "reason=client_logout" in ends(proxy)[0]
    assert metric(proxy, "mailproxy_commands_total", protocol="imap", command="LOGOUT",
                  status="OK") == 1
    # what came from Dovecot after the login is SELECT's answer only: the BYE and OK were ours
    assert down_bytes(proxy) == len(selected)
    wait_for(lambda: dovecot_logged_out(dovecot, user[0]) == 1, what="Dovecot's 'Logged out'")
    assert len([line for line in dovecot.log().splitlines()
                if f"imap({user[0]})" in line and "Disconnected" in line]) == 1
    wait_for(lambda: metric(proxy, "mailproxy_relay_engine_sessions") == 0,
             what="the upstream's close done in the engine")
    assert not proxy.tracebacks()


def test_imaplib_logout(proxy, dovecot, user):
    imap = imaplib.IMAP4(HOST, proxy.port("imap"), timeout=30)
    imap.login(*user)
    assert imap.select("INBOX")[0] == "OK"
    assert imap.logout() == ("BYE", [b"Logging out"])
    wait_for(lambda: dovecot_logged_out(dovecot, user[0]) == 1, what="Dovecot's 'Logged out'")
    wait_for(lambda: len(ends(proxy)) == 1, what="the session_end line")
    assert "reason=client_logout" in ends(proxy)[0]


def imap_processes(dovecot) -> set[int]:
    """The pids of this Dovecot's imap (post-login) processes."""
    title = f"dovecot-{dovecot.name}/imap\0".encode()
    pids = set()
    for proc in pathlib.Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes() == title:
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


def unread_at(pid: int) -> int:
    """Bytes waiting unread in the TCP sockets of process `pid` (/proc/net/tcp's rx_queue)."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        link = os.readlink(fd)
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    total = 0
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if fields[9] in inodes:
                total += int(fields[4].split(":")[1], 16)
    return total


@pytest.mark.parametrize("pipelined", [True, False])
def test_logout_behind_a_command_in_flight_is_dovecots_answered_in_order(proxy, dovecot, user,
                                                                          pipelined):
    """Dovecot's imap process is stopped while the client sends NOOP and LOGOUT (in one write,
    or LOGOUT once NOOP is at Dovecot) and until both are at Dovecot: the LOGOUT came with NOOP
    in flight, so the proxy does not answer it; once Dovecot goes on, the three answers come in
    order, all Dovecot's (its tagged OKs may carry timings: "completed (0.001 + 0.000 secs).")."""
    before = imap_processes(dovecot)   # (Dovecot's imap serves one session per process)
    sock = logged_in(proxy, user)
    wait_for(lambda: len(imap_processes(dovecot) - before) == 1, what="the session's imap process")
    pids = list(imap_processes(dovecot) - before)
    os.kill(pids[0], signal.SIGSTOP)
    try:
        if pipelined:
            sock.sendall(b"b NOOP\r\nc LOGOUT\r\n")
        else:
            sock.sendall(b"b NOOP\r\n")   # forwarded alone: in flight once Dovecot holds it
            wait_for(lambda: unread_at(pids[0]) == len(b"b NOOP\r\n"), what="NOOP at Dovecot")
            sock.sendall(b"c LOGOUT\r\n")
        # both relayed while Dovecot could answer neither: the LOGOUT came with NOOP in flight
        wait_for(lambda: unread_at(pids[0]) == len(b"b NOOP\r\nc LOGOUT\r\n"),
                 what="NOOP and LOGOUT at Dovecot")
    finally:
        os.kill(pids[0], signal.SIGCONT)
    received = to_eof(sock)
    sock.close()
    assert re.fullmatch(rb"b OK NOOP completed[^\r\n]*\r\n\* BYE Logging out\r\n"
                        rb"c OK Logout completed[^\r\n]*\r\n", received), received
    wait_for(lambda: len(ends(proxy)) == 1, what="the session_end line")
    assert "reason=client_logout" in ends(proxy)[0]
    assert down_bytes(proxy) == len(received)   # all Dovecot's
    assert metric(proxy, "mailproxy_commands_total", protocol="imap", command="LOGOUT",
                  status="OK") == 1
    wait_for(lambda: dovecot_logged_out(dovecot, user[0]) == 1, what="Dovecot's 'Logged out'")


def open_fds(proxy) -> int:
    return len(os.listdir(f"/proc/{proxy.pid}/fd"))


def test_an_upstream_that_does_not_close_after_logout_is_closed_at_the_bound(proxy, dovecot,
                                                                              user):
    """Dovecot's imap process stopped before the client's LOGOUT: the client still gets its
    answer from the proxy at once, and the session ends LOGOUT_WAIT later with nothing left
    open (the proxy's descriptors back to what they were, the engine's gauge at 0); Dovecot,
    let go on, still finds the LOGOUT and logs out."""
    before = imap_processes(dovecot)
    sock = logged_in(proxy, user)
    wait_for(lambda: len(imap_processes(dovecot) - before) == 1,
             what="the session's imap process")
    pid = next(iter(imap_processes(dovecot) - before))
    os.kill(pid, signal.SIGSTOP)
    try:
        fds = open_fds(proxy)
        sock.sendall(b"c LOGOUT\r\n")
        assert read_until(sock, b"c OK ") + read_until(sock, b"\r\n") == \
            b"* BYE Logging out\r\nc OK Logout completed.\r\n"   # (Dovecot is stopped)
        sock.close()
        wait_for(lambda: len(ends(proxy)) == 1, what="the session's end at LOGOUT_WAIT")
        assert "reason=client_logout" in ends(proxy)[0]
        wait_for(lambda: open_fds(proxy) == fds - 2, what="both connections closed")
        wait_for(lambda: metric(proxy, "mailproxy_relay_engine_sessions") == 0,
                 what="the engine's gauge back at 0")
        # it went upstream all the same, and then the proxy's close (rx_queue counts the FIN)
        assert unread_at(pid) == len(b"c LOGOUT\r\n") + 1
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: dovecot_logged_out(dovecot, user[0]) == 1, what="Dovecot's 'Logged out'")
    assert not proxy.tracebacks()
