"""Command line: `mailproxy serve|check-config|gen-cert|gateway sync`. argparse -> config -> trio.run."""

from __future__ import annotations

import argparse
import sys

from . import __version__, certgen, config as config_mod, logs
from .gateway import sync_cli


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EXIT_RUNTIME, EXIT_CONFIG = 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mailproxy {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log line format on stderr (default: text)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        metavar="LEVEL", help="one of " + ", ".join(LOG_LEVELS) + " (default: INFO)")
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


def _load(path: str):
    """The validated config with every file it names loaded, or None after printing each
    problem as one line `FILE: line N: ...`."""
    from . import preflight

    try:
        config = config_mod.load(path)
    except config_mod.ConfigError as exc:
        for error in exc.errors:
            print(f"{path}: {error}", file=sys.stderr)
        return None
    problems = preflight.file_problems(config)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    return None if problems else config


def _check_config(path: str) -> int:
    if _load(path) is None:
        return EXIT_CONFIG
    print(f"{path}: OK")
    return 0


def _serve(path: str) -> int:
    import trio

    from . import app
    from .net.tls import TLSConfigError
    from .preflight import StartupError
    from .store import StoreError, StoreKeyError

    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    try:
        trio.run(app.serve, config, path)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # one line for what an operator can fix, a traceback otherwise
        leaf = _leaf(exc, (StartupError, TLSConfigError, StoreError, NotImplementedError))
        if leaf is None:
            raise
        message = str(leaf)
        if isinstance(leaf, (StoreError, NotImplementedError)):
            message = f"gateway.store {config.gateway.store}: {leaf}"
            if isinstance(leaf, StoreKeyError):
                message = (f"gateway.key_file {config.gateway.key_file}: {leaf}; the store was "
                           f"written with other keys: configure the key file it was written "
                           f"with (rotate keys by appending a line, never by replacing the file)")
        print(f"{path}: {message}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(leaf, (TLSConfigError, StoreKeyError)) else EXIT_RUNTIME
    return 0


def _leaf(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """`exc` itself, or the first exception of `types` inside (nested) exception groups."""
    if isinstance(exc, types):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _leaf(inner, types)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
