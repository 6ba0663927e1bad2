"""`mailproxy gateway sync --config FILE USER`: one POP3 -> store sync, for operators and tests.

The password comes from `--password-file FILE` or the MAILPROXY_PASSWORD environment variable, never
from the command line (it would show in `ps`); an OAuth2-brokered upstream needs none (the
user's stored refresh token is used, proxy/oauth2). Exit status: 0 synced, 1 sync failed, 2 usage or
configuration error. Also runnable as `python -m proxy.gateway.sync_cli --config FILE USER`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

PASSWORD_ENV = "MAILPROXY_PASSWORD"
_BAR_WIDTH = 30


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `gateway sync` and `gateway migrate` to the main parser's subcommands; returns the
    `gateway` parser."""
    gateway = subparsers.add_parser("gateway", help="POP3-to-IMAP gateway maintenance")
    commands = gateway.add_subparsers(dest="gateway_command", required=True)
    sync = commands.add_parser("sync", help="fetch a user's POP3 mailbox into the gateway store once")
    _add_sync_arguments(sync)
    from . import migrate_cli

    migrate_cli.add_cli(commands)
    return gateway


def _add_sync_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="mailproxy YAML config")
    parser.add_argument("--password-file", metavar="FILE",
                        help=f"file holding the user's password (default: ${PASSWORD_ENV})")
    parser.add_argument("--upstream", metavar="NAME",
                        help="upstream to read (default: the user's route)")
    parser.add_argument("user", metavar="USER")


def _password(args: argparse.Namespace) -> str | None:
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as fh:
            return fh.read().rstrip("\r\n")
    return os.environ.get(PASSWORD_ENV)


class ProgressBar:
    """`[#####.....] 120/500 messages, 3.1 MB` redrawn in place on a terminal."""

    def __init__(self, out: TextIO):
        self.out = out
        self.drawn = False

    def __call__(self, done: int, total: int, nbytes: int) -> None:
        filled = _BAR_WIDTH * done // total if total else _BAR_WIDTH
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        self.out.write(f"\r[{bar}] {done}/{total} messages, {nbytes / 1e6:.1f} MB")
        self.out.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()


def run_cli(args: argparse.Namespace) -> int:
    """Run `gateway sync` (or `gateway migrate`) with parsed arguments; returns the exit status."""
    if getattr(args, "gateway_command", "sync") == "migrate":
        from . import migrate_cli

        return migrate_cli.run_cli(args)
    import trio

    from .. import config as config_mod
    from .. import logs
    from ..oauth2 import Broker, BrokerUnavailable, NotEnrolled, RefreshRefused
    from ..session.upstream import UpstreamError
    from ..store import StoreError
    from .fetcher import SyncResult, sync_account
    from .service import open_configured_store
    from .users import canonical_user

    config = config_mod.load_or_report(args.config)
    if config is None:
        return 2
    gateway = config.gateway
    if gateway is None:
        print(f"{args.config}: no gateway: section", file=sys.stderr)
        return 2
    user = canonical_user(args.user, gateway.user_case)   # the account IMAP logins use
    upstream = args.upstream or config.route(user)
    if upstream is None or upstream not in config.upstreams:
        print(f"no upstream for user {args.user!r}", file=sys.stderr)
        return 2
    auth = config.upstreams[upstream].auth
    oauth2 = None if auth is None else auth.oauth2   # brokered: the stored refresh token
    try:
        password = "" if oauth2 is not None else _password(args)
    except OSError as exc:
        print(f"cannot read password file: {exc.strerror}", file=sys.stderr)
        return 2
    if password is None:
        print(f"no password: use --password-file FILE or set {PASSWORD_ENV}", file=sys.stderr)
        return 2
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None

    async def main() -> SyncResult:
        sasl = None
        if oauth2 is not None:
            broker = Broker(oauth2)
            sasl = broker.mechanism, broker.message(user, await broker.access_token(user))
        store = await open_configured_store(gateway)
        try:
            try:
                result = await sync_account(config, store, upstream, user, password,
                                            progress=bar, sasl=sasl)
            except UpstreamError as exc:   # kept for `gateway accounts` when the account exists
                account = await store.get_account(upstream, user)
                if account is not None:
                    await store.record_sync(account.id, logs.sanitize(str(exc)))   # "label: why"
                raise
            if not result.skipped:
                account = await store.ensure_account(upstream, user)
                await store.record_sync(account.id, None)
            return result
        finally:
            await store.close()

    try:
        result = trio.run(main)
    except (UpstreamError, StoreError, NotEnrolled, RefreshRefused, BrokerUnavailable) as exc:
        if bar:
            bar.finish()
        why = (f"{user} has no refresh token (mailproxy oauth2 enrol)"
               if isinstance(exc, NotEnrolled) else
               f"the provider refused {user}'s refresh token ({exc}); enrol again"
               if isinstance(exc, RefreshRefused) else str(exc))
        print(f"sync failed: {why}", file=sys.stderr)
        return 1
    if bar:
        bar.finish()
    if result.skipped:
        print("skipped: another process is fetching this account (fetch lease held)")
        return 0
    print(f"fetched {result.new} messages, {result.bytes} bytes, deleted {result.deleted_upstream} "
          f"upstream in {result.duration:.2f} s")
    if result.over_quota:
        print(f"over quota: {result.over_quota} new messages kept upstream")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .. import logs

    parser = argparse.ArgumentParser(prog="python -m proxy.gateway.sync_cli", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    _add_sync_arguments(parser)
    args = parser.parse_args(argv)
    logs.setup("text", args.log_level)
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
