"""`mailproxy gateway accounts` and `mailproxy gateway delete-account USER`: the gateway store's
accounts, listed and deleted.

Both open the store named by the config (`gateway.store`, key file, password) directly, as
`gateway sync` does, so they work with the proxy running or stopped, and see every replica's
accounts on a shared PostgreSQL store. `delete-account` deletes everything the account holds in
the store (mailboxes, messages, flags, UIDL history, stored credentials): mail the upstream no
longer keeps (`upstream_retention`) is gone for good, hence `--yes`. Afterwards, when the config
has an `admin:` section, it ends the user's sessions on this proxy (as `mailproxy kick USER`):
a session still open would show mail that no longer exists. The user's next login starts a new,
empty account, filled from the upstream again.

Exit status: 0 done, 1 no such account or the store failed, 2 usage or configuration error
(including a delete without `--yes`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import urllib.parse
from typing import Any

from . import admin_cli
from . import config as config_mod
from .store import AccountSummary, StoreError


def add_cli(gateway_commands: argparse._SubParsersAction) -> None:
    """Add `accounts` and `delete-account` to the `gateway` subcommands."""
    accounts = gateway_commands.add_parser(
        "accounts", help="list the gateway store's accounts: messages, bytes, last fetch")
    accounts.add_argument("--json", action="store_true", help="one JSON array (times as Unix "
                                                              "seconds) instead of a table")
    delete = gateway_commands.add_parser(
        "delete-account", help="delete a user's account and all its mail from the gateway store")
    delete.add_argument("user", metavar="USER")
    delete.add_argument("--upstream", metavar="NAME",
                        help="only the account on this upstream (default: every upstream)")
    delete.add_argument("--yes", action="store_true",
                        help="really delete (without it, only say what would be deleted)")
    for parser in (accounts, delete):
        parser.add_argument("--config", required=True, metavar="FILE", help="mailproxy YAML config")


def run_cli(args: argparse.Namespace) -> int:
    import trio

    from .gateway.users import canonical_user

    config = config_mod.load_or_report(args.config)
    if config is None:
        return 2
    if config.gateway is None:
        print(f"{args.config}: no gateway: section", file=sys.stderr)
        return 2
    try:
        if args.gateway_command == "accounts":
            _print_accounts(trio.run(_summaries, config.gateway), args.json)
            return 0
        user = canonical_user(args.user, config.gateway.user_case)
        found = trio.run(_delete, config.gateway, user, args.upstream, args.yes)
    except StoreError as exc:
        print(f"gateway.store: {exc}", file=sys.stderr)
        return 1
    if not found:
        on = f" on upstream {args.upstream}" if args.upstream else ""
        print(f"no gateway account for user {user}{on}", file=sys.stderr)
        return 1
    for summary in found:
        print(f"{'deleted' if args.yes else 'would delete'} {_describe(summary)}")
    if not args.yes:
        print("nothing deleted: run again with --yes to delete", file=sys.stderr)
        return 2
    if config.admin is not None:
        _kick(config.admin, user)
    return 0


async def _summaries(gateway: config_mod.Gateway) -> list[AccountSummary]:
    from .gateway.service import open_configured_store

    store = await open_configured_store(gateway)
    try:
        return await store.account_summaries()
    finally:
        await store.close()


async def _delete(gateway: config_mod.Gateway, user: str, upstream: str | None,
                  really: bool) -> list[AccountSummary]:
    """The accounts of `user` (on `upstream`, or on every one), deleted when `really`."""
    from .gateway.service import open_configured_store

    store = await open_configured_store(gateway)
    try:
        found = [s for s in await store.account_summaries()
                 if s.account.user == user and upstream in (None, s.account.upstream)]
        if really:
            for summary in found:
                await store.delete_account(summary.account.id)
        return found
    finally:
        await store.close()


def _kick(admin: config_mod.Admin, user: str) -> None:
    try:
        answer = admin_cli.call(admin, "POST", "/kick?" + urllib.parse.urlencode({"user": user}))
    except admin_cli.AdminError as exc:   # the proxy is stopped: no session to end
        print(f"sessions not ended: {exc}", file=sys.stderr)
        return
    print(f"kicked {answer['kicked']} session(s) of user {user}")


def _describe(summary: AccountSummary) -> str:
    return (f"account {summary.account.user} on upstream {summary.account.upstream}: "
            f"{summary.messages} messages, {summary.bytes} bytes")


def _when(unix: float | None) -> str:
    if unix is None:
        return "-"
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_accounts(summaries: list[AccountSummary], as_json: bool) -> None:
    if as_json:
        rows: list[dict[str, Any]] = [
            {"user": s.account.user, "upstream": s.account.upstream, "messages": s.messages,
             "bytes": s.bytes, "last_fetch": s.last_fetch, "last_sync": s.last_sync,
             "last_error": s.last_error, "last_error_at": s.last_error_at} for s in summaries]
        print(json.dumps(rows, indent=2))
        return
    columns = ("user", "upstream", "messages", "bytes", "last_fetch", "last_sync", "last_error")
    table = [[s.account.user, s.account.upstream, str(s.messages), str(s.bytes),
              _when(s.last_fetch), _when(s.last_sync),
              "-" if s.last_error is None else f"{_when(s.last_error_at)} {s.last_error}"]
             for s in summaries]
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(columns)]
    for row in [list(columns)] + table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
