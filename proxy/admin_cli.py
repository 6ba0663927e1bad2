"""`mailproxy who|kick|reload --config FILE`: the admin endpoint's verbs (proxy/admin.py).

The socket, or the address and bearer token, come from the config's `admin:` section, so an
operator runs these on the proxy's host with the same config file; the socket is used when both
are configured. Exit status: 0 done, 1 the proxy did not answer (or refused), 2 no `admin:`
section or a bad config.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import socket
import sys
import urllib.parse
from typing import Any

from . import config as config_mod

TIMEOUT = 10.0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    who = subparsers.add_parser("who", help="list live sessions (admin endpoint)")
    kick = subparsers.add_parser("kick", help="end the sessions of a user or a client IP "
                                              "(admin endpoint)")
    kick.add_argument("target", metavar="USER|IP", help="a user name or a client IP address")
    reload = subparsers.add_parser("reload", help="reload the config and certificates, as "
                                                  "SIGHUP (admin endpoint)")
    for parser in (who, kick, reload):
        parser.add_argument("--config", required=True, metavar="FILE",
                            help="the proxy's YAML config (admin address and token)")


def run_cli(args: argparse.Namespace) -> int:
    config = config_mod.load_or_report(args.config)
    if config is None:
        return 2
    if config.admin is None:
        print(f"{args.config}: no admin: section; add admin: {{socket: /run/mailproxy/admin.sock}} "
              f"and restart mailproxy", file=sys.stderr)
        return 2
    try:
        if args.command == "who":
            _print_sessions(call(config.admin, "GET", "/sessions"))
        elif args.command == "kick":
            key = "ip" if _is_ip(args.target) else "user"
            answer = call(config.admin, "POST", "/kick?" + urllib.parse.urlencode(
                {key: args.target}))
            print(f"kicked {answer['kicked']} session(s) of {key} {args.target}")
        else:
            answer = call(config.admin, "POST", "/reload")
            if not answer["reloaded"]:
                for error in answer["errors"]:
                    print(f"reload refused: {error}", file=sys.stderr)
                return 1
            print("reloaded")
    except AdminError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class AdminError(Exception):
    """The admin endpoint did not answer, or refused: one line naming where it was asked."""


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the Unix socket `admin.socket`."""

    def __init__(self, path: str):
        super().__init__("localhost", timeout=TIMEOUT)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call(admin: config_mod.Admin, method: str, path: str) -> Any:
    """One request to the admin endpoint (its socket when configured, else its address with
    the token); the JSON answer. Raises AdminError."""
    headers = {}
    connection: http.client.HTTPConnection
    if admin.socket is not None:
        where = f"admin.socket {admin.socket}"
        connection = _UnixConnection(str(admin.socket))
    else:
        assert admin.address is not None and admin.token is not None   # config.check_admin
        where = f"admin.address {admin.address}"
        host = admin.address.host
        host = "127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host
        connection = http.client.HTTPConnection(host, admin.address.port, timeout=TIMEOUT)
        headers["Authorization"] = "Bearer " + admin.token.value.decode()
    try:
        connection.request(method, path, body=b"" if method == "POST" else None, headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
    except (OSError, http.client.HTTPException, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise AdminError(f"{where}: {why}; is mailproxy running with this config?") from None
    finally:
        connection.close()
    if response.status != 200:
        raise AdminError(f"{where}: HTTP {response.status}: {answer.get('error', '')}")
    return answer


def _print_sessions(sessions: list[dict[str, Any]]) -> None:
    columns: tuple[str, ...] = ("listener", "protocol", "user", "client", "upstream", "tls",
                                "since", "commands", "bytes_in", "bytes_out")
    if any("worker" in s for s in sessions):  # workers: N (proxy/workers/)
        columns += ("worker",)
    rows = [[str(s[c] if s[c] is not None else "-") for c in columns] for s in sessions]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    for row in [list(columns)] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
