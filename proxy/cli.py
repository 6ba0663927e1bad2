"""Command line: argparse -> config -> trio.run. Every command has a one-line purpose and an
example in its --help (`mailproxy help CMD` prints the same); errors an operator can fix are one
line with exit status 2 (configuration or usage) or 1 (runtime), never a traceback."""

from __future__ import annotations

import argparse
import sys

from . import __version__, accounts_cli, admin_cli, certgen, keygen, logs
from . import config as config_mod
from .gateway import sync_cli
from .oauth2 import cli as oauth2_cli

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EXIT_RUNTIME, EXIT_CONFIG = 1, 2
DESCRIPTION = "mailproxy: a protocol-aware IMAP/POP3 proxy and POP3-to-IMAP gateway."

# Usage examples shown by `--help`, per command path.
EXAMPLES = {
    (): "mailproxy serve --config /etc/mailproxy/mailproxy.yaml\n"
        "mailproxy help check-config",
    ("serve",): "mailproxy --log-format json serve --config /etc/mailproxy/mailproxy.yaml",
    ("check-config",): "mailproxy check-config /etc/mailproxy/mailproxy.yaml",
    ("gen-cert",): "mailproxy gen-cert --out config/tls --name localhost --name 127.0.0.1",
    ("gen-key",): "mailproxy gen-key --out /etc/mailproxy/store.key",
    ("gateway",): "mailproxy gateway sync --config mailproxy.yaml alice@example.com",
    ("gateway", "sync"): "mailproxy gateway sync --config mailproxy.yaml "
                         "--password-file alice.pw alice@example.com",
    ("gateway", "migrate"): "mailproxy gateway migrate --from /var/lib/mailproxy/gateway.db "
                            "--to 'postgresql://mailproxy@db/mailproxy?sslmode=verify-full' "
                            "--password-file pg.pw",
    ("gateway", "accounts"): "mailproxy gateway accounts --config mailproxy.yaml --json",
    ("gateway", "delete-account"): "mailproxy gateway delete-account --config mailproxy.yaml "
                                   "--yes alice@example.com",
    ("oauth2",): "mailproxy oauth2 enrol --config mailproxy.yaml --upstream m365 alice@example.com",
    ("oauth2", "enrol"): "mailproxy oauth2 enrol --config mailproxy.yaml --upstream m365 "
                         "--flow device alice@example.com",
    ("oauth2", "hash-password"): "mailproxy oauth2 hash-password alice@example.com "
                                 ">> /etc/mailproxy/m365-users",
    ("help",): "mailproxy help serve",
    ("who",): "mailproxy who --config /etc/mailproxy/mailproxy.yaml",
    ("kick",): "mailproxy kick --config /etc/mailproxy/mailproxy.yaml alice@example.com",
    ("reload",): "mailproxy reload --config /etc/mailproxy/mailproxy.yaml",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailproxy", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"mailproxy {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log line format on stderr (default: text)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        metavar="LEVEL", help="one of " + ", ".join(LOG_LEVELS) + " (default: INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the proxy on a config file")
    serve.add_argument("--config", required=True, metavar="FILE", help="mailproxy YAML config")
    check = sub.add_parser("check-config", help="check a config file and every file it names, "
                                                "as serve would; print every problem")
    check.add_argument("file", metavar="FILE", help="mailproxy YAML config")
    certgen.add_cli(sub)
    keygen.add_cli(sub)
    accounts_cli.add_cli(_subparsers(sync_cli.add_cli(sub)))
    oauth2_cli.add_cli(sub)
    admin_cli.add_cli(sub)
    helper = sub.add_parser("help", help="show the help of a command")
    helper.add_argument("topic", nargs="*", metavar="COMMAND", help="e.g. serve, gateway sync")
    _describe(parser, ())
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise ValueError(f"{parser.prog} has no subcommands")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parsers of `parser`'s subcommands, by name."""
    try:
        return dict(_subparsers(parser).choices)
    except ValueError:
        return {}


def _describe(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
    """Give every (sub)command its one-line purpose as description and its example as epilog."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "example:\n" + "\n".join("  " + line for line in EXAMPLES[path].splitlines())
    helps = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
    for name, child in subcommands(parser).items():
        child.description = child.description or helps.get(name)
        _describe(child, path + (name,))


def _help(parser: argparse.ArgumentParser, topic: list[str]) -> int:
    """`mailproxy help CMD [SUBCMD]`: that command's --help."""
    target = parser
    for word in topic:
        children = subcommands(target)
        if word not in children:
            print(f"mailproxy help: no command {' '.join(topic)!r}; commands: "
                  f"{', '.join(children)}", file=sys.stderr)
            return EXIT_CONFIG
        target = children[word]
    target.print_help()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_format, args.log_level)
    if args.command == "help":
        return _help(parser, args.topic)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "serve":
        return _serve(args.config, args.log_format, args.log_level)
    if args.command == "gen-cert":
        return certgen.run_cli(args)
    if args.command == "gen-key":
        return keygen.run_cli(args)
    if args.command == "gateway":
        if args.gateway_command in ("accounts", "delete-account"):
            return accounts_cli.run_cli(args)
        return sync_cli.run_cli(args)
    if args.command == "oauth2":
        return oauth2_cli.run_cli(args)
    if args.command in ("who", "kick", "reload"):
        return admin_cli.run_cli(args)
    return EXIT_CONFIG


def _load(path: str):
    """The validated config with every file it names loaded, or None after printing each
    problem as one line `FILE: line N: ...`."""
    from . import preflight

    config = config_mod.load_or_report(path)
    if config is None:
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


def _serve(path: str, log_format: str, log_level: str) -> int:
    import trio

    from . import workers
    from .preflight import startup_failure

    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    try:
        trio.run(workers.serve, config, path, workers.LogSettings(log_format, log_level))
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # one line for what an operator can fix, a traceback otherwise
        failure = startup_failure(exc, config)
        if failure is None:
            raise
        message, status = failure
        print(f"{path}: {message}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
