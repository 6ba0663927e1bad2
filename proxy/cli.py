"""Command line: `mailproxy serve|check-config|gen-cert|gateway sync`. argparse -> config -> trio.run."""

from __future__ import annotations

import argparse
import sys

from . import __version__, certgen, config as config_mod, logs
from .gateway import sync_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mailproxy {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log line format on stderr (default: text)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", required=True, metavar="FILE")
    check = sub.add_parser("check-config", help="validate a config file and list every error")
    check.add_argument("file", metavar="FILE")
    certgen.add_cli(sub)
    sync_cli.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup(args.log_format, args.log_level)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "gen-cert":
        return certgen.run_cli(args)
    if args.command == "gateway":
        return sync_cli.run_cli(args)
    return 2


def _check_config(path: str) -> int:
    try:
        config_mod.load(path)
    except config_mod.ConfigError as exc:
        for error in exc.errors:
            print(f"{path}: {error}", file=sys.stderr)
        return 1
    print(f"{path}: OK")
    return 0


def _serve(path: str) -> int:
    import trio

    from . import app
    from .net.tls import TLSConfigError

    try:
        config = config_mod.load(path)
    except config_mod.ConfigError as exc:
        for error in exc.errors:
            print(f"{path}: {error}", file=sys.stderr)
        return 1
    try:
        trio.run(app.serve, config, path)
    except TLSConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
