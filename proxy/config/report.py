"""`load_or_report(path)`: a config file as the command-line tools load it. Every error goes to
stderr as one line `FILE: error` (each error names its YAML path and line), and an invalid file
gives None, for the tool to exit with its usage status."""

from __future__ import annotations

import sys

from .loader import Config, ConfigError, load


def load_or_report(path: str) -> Config | None:
    """The validated config, or None after printing each of its errors to stderr."""
    try:
        return load(path)
    except ConfigError as exc:
        for error in exc.errors:
            print(f"{path}: {error}", file=sys.stderr)
        return None
