"""The value types every config section uses: durations, sizes, addresses, secrets, certificates.

Each is a pydantic-annotated type whose validator accepts the YAML spelling (`30s`, `64KiB`,
`host:port`, `{file: PATH}`) and yields a plain Python value. tests/test_docs_configuration.py
names these validators (by function name) to print a setting's type.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, PlainValidator, StrictStr

STRICT = ConfigDict(extra="forbid")   # every section rejects unknown keys
Problem = tuple[tuple[str | int, ...], str]   # (YAML path, message) of a cross-field rule

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: Any) -> float:
    """`30s`, `10m`, `1.5h`, `30d`, `250ms` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s or 10m")
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError("expected a duration such as 30s, 10m, 2h or 30d")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def parse_size(value: Any) -> int:
    """`64KiB`, `50MB`, `8192` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 8192, 64KiB or 50MB")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError("expected a size such as 8192, 64KiB or 50MB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: Any) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError("expected HOST:PORT")
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT such as 127.0.0.1:1143 or [::1]:993")
    return Address(host, int(port))


ListenAddress = Annotated[Address, PlainValidator(parse_address)]


class Secret:
    """A secret value read from a file or the environment; never printed."""

    __slots__ = ("value", "source")

    def __init__(self, value: bytes, source: str):
        self.value = value
        self.source = source

    def __repr__(self) -> str:
        return f"Secret(<from {self.source}>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def load_secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("file", "env"):
        raise ValueError("a secret is {file: PATH} or {env: NAME}, never inline")
    kind, where = next(iter(value.items()))
    if kind == "file":
        try:
            return Secret(Path(where).read_bytes().strip(), f"file {where}")
        except OSError as exc:
            raise ValueError(f"cannot read secret file: {exc.strerror}") from None
    if where not in os.environ:
        raise ValueError(f"environment variable {where} is not set")
    return Secret(os.environ[where].encode(), f"env {where}")


SecretValue = Annotated[Secret, PlainValidator(load_secret)]

TlsMode = Literal["none", "starttls", "implicit"]


@dataclass(frozen=True, slots=True)
class Certificate:
    __pydantic_config__ = STRICT
    cert: Path
    key: Path
    names: tuple[StrictStr, ...] = ()
