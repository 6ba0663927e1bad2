"""`mailproxy who|kick|reload --config FILE`: the admin endpoint's verbs (proxy/admin.py).

The address and bearer token come from the config's `admin:` section, so an operator runs these
on the proxy's host with the same config file. Exit status: 0 done, 1 the proxy did not answer
(or refused), 2 no `admin:` section or a bad config.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
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
    try:
        config = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        for error in exc.errors:
            print(f"{args.config}: {error}", file=sys.stderr)
        return 2
    if config.admin is None:
        print(f"{args.config}: no admin: section; add admin: {{address: 127.0.0.1:9101, "
              f"token: {{file: PATH}}}} and restart mailproxy", file=sys.stderr)
        return 2
    try:
        if args.command == "who":
            _print_sessions(_call(config.admin, "GET", "/sessions"))
        elif args.command == "kick":
            key = "ip" if _is_ip(args.target) else "user"
            answer = _call(config.admin, "POST", "/kick?" + urllib.parse.urlencode(
                {key: args.target}))
            print(f"kicked {answer['kicked']} session(s) of {key} {args.target}")
        else:
            answer = _call(config.admin, "POST", "/reload")
            if not answer["reloaded"]:
                for error in answer["errors"]:
                    print(f"reload refused: {error}", file=sys.stderr)
                return 1
            print("reloaded")
    except (OSError, urllib.error.HTTPError) as exc:
        print(f"admin.address {config.admin.address}: {exc}", file=sys.stderr)
        return 1
    return 0


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _call(admin: config_mod.Admin, method: str, path: str) -> Any:
    host = admin.address.host
    host = "127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host
    if ":" in host:
        host = f"[{host}]"
    request = urllib.request.Request(
        f"http://{host}:{admin.address.port}{path}", method=method, data=b"" if method == "POST"
        else None, headers={"Authorization": "Bearer " + admin.token.value.decode()})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())


def _print_sessions(sessions: list[dict[str, Any]]) -> None:
    columns: tuple[str, ...] = ("listener", "protocol", "user", "client", "upstream", "tls",
                                "since", "commands")
    if any("worker" in s for s in sessions):  # workers: N (proxy/workers/)
        columns += ("worker",)
    rows = [[str(s[c] if s[c] is not None else "-") for c in columns] for s in sessions]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    for row in [list(columns)] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
