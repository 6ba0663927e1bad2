"""docs/configuration.md documents every setting of the config schema (proxy/config/), with the
schema's own type and default, and nothing the schema does not have: it cannot drift.

The expected rows are computed from the dataclasses. When this test fails after a config change,
its message lists the rows to add (with type and default filled in) and the rows to remove."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from proxy import config as config_mod

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
_ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+) \| ([^|]+) \| (.+) \| (.+) \|$")
_VALIDATOR_TYPES = {"parse_duration": "duration", "parse_size": "size",
                    "parse_address": "address", "load_secret": "secret"}


def _validator_type(metadata: tuple[Any, ...]) -> str | None:
    for item in metadata:
        func = getattr(item, "func", None)
        name = getattr(func, "__name__", "")
        if name in _VALIDATOR_TYPES:
            return _VALIDATOR_TYPES[name]
    return None


def _strip(tp: Any) -> tuple[Any, str | None]:
    """(type without Annotated, the special kind its validator gives, if any)."""
    if get_origin(tp) is typing.Annotated:
        base, *metadata = get_args(tp)
        inner, kind = _strip(base)
        return inner, _validator_type(tuple(metadata)) or kind
    return tp, None


def _members(tp: Any) -> tuple[list[Any], bool]:
    """Union members other than None, and whether None is allowed."""
    base, _ = _strip(tp)
    if get_origin(base) in (Union, types.UnionType):
        args = get_args(base)
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], False


def type_name(tp: Any) -> str:
    (member, *others), _ = _members(tp)
    if others:
        names = list(dict.fromkeys(type_name(m) for m in (member, *others)))
        return " or ".join(names)
    base, kind = _strip(member)
    if kind:
        return kind
    base, _ = _strip(base)
    if dataclasses.is_dataclass(base):
        return "mapping"
    if get_origin(base) is Literal:
        return " or ".join(f"`{a}`" for a in get_args(base))
    if get_origin(base) is tuple:
        return "list of " + type_name(get_args(base)[0]) + "s"
    if get_origin(base) is dict:
        return "map of " + type_name(get_args(base)[1]) + "s"
    return {int: "integer", str: "string", bool: "boolean", float: "number",
            pathlib.Path: "path"}.get(base, getattr(base, "__name__", str(base)))


def _seconds_text(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value * 1000:g}ms" if value < 1 else f"{value}s"


def _size_text(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def default_text(field: dataclasses.Field, tp: Any) -> str:
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        return "required"
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if value is None:
        return "none"
    if dataclasses.is_dataclass(value):
        return "see below"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (tuple, list)):
        return "`[]`" if not value else f"`{list(value)}`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    kind = type_name(tp)
    if kind == "duration":
        return f"`{_seconds_text(float(value))}`"
    if kind == "size":
        return f"`{_size_text(int(value))}`"
    return f"`{value}`"


def expected_rows(tp: type = config_mod.Config, prefix: str = "") -> dict[str, tuple[str, str]]:
    """Every setting path -> (type, default), depth first in declaration order."""
    rows: dict[str, tuple[str, str]] = {}
    hints = typing.get_type_hints(tp, include_extras=True)
    for field in dataclasses.fields(tp):
        if field.name.startswith("_") or get_origin(hints[field.name]) is typing.ClassVar:
            continue
        hint = hints[field.name]
        path = f"{prefix}{field.name}"
        rows[path] = (type_name(hint), default_text(field, hint))
        for child, sep in _children(hint):
            rows.update(expected_rows(child, f"{path}{sep}"))
    return rows


def _children(hint: Any) -> list[tuple[type, str]]:
    """Dataclasses nested under a setting, with the separator their keys follow."""
    found = []
    members, _ = _members(hint)
    for member in members:
        base, kind = _strip(member)
        if kind:        # a scalar written as text (an address, a duration...)
            continue
        sep = "."
        if get_origin(base) is tuple:
            base, sep = _strip(get_args(base)[0])[0], "[]."
        elif get_origin(base) is dict:
            base, sep = _strip(get_args(base)[1])[0], ".NAME."
        for inner in _members(base)[0]:
            inner, kind = _strip(inner)
            if dataclasses.is_dataclass(inner) and not kind:
                found.append((inner, sep))
    return found


def documented_rows() -> dict[str, tuple[str, str, str, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = _ROW.match(line.strip())
        if match and match.group(1) != "Setting":
            key, kind, default, meaning, example = (g.strip() for g in match.groups())
            assert key not in rows, f"{key} is documented twice"
            rows[key] = (kind, default, meaning, example)
    return rows


def test_every_setting_is_documented_with_its_type_and_default() -> None:
    expected = expected_rows()
    documented = documented_rows()
    missing = [f"| `{k}` | {t} | {d} | WHAT IT DOES | `EXAMPLE` |"
               for k, (t, d) in expected.items() if k not in documented]
    extra = [k for k in documented if k not in expected]
    wrong = [f"{k}: documented {documented[k][:2]}, schema says {(t, d)}"
             for k, (t, d) in expected.items()
             if k in documented and documented[k][:2] != (t, d)]
    assert not missing, "add to docs/configuration.md:\n" + "\n".join(missing)
    assert not extra, f"documented but not in the schema: {extra}"
    assert not wrong, "\n".join(wrong)
    for key, (_, _, meaning, example) in documented.items():
        assert meaning and example, f"{key}: needs a description and an example"


def test_the_walker_sees_nested_and_listed_settings() -> None:
    rows = expected_rows()
    assert rows["listeners"] == ("list of mappings", "required")
    assert rows["listeners[].timeouts.idle"] == ("duration", "`30m`")
    assert rows["listeners[].limits.max_literal"] == ("size", "`64MiB`")
    assert rows["listeners[].tls"] == ("`none` or `starttls` or `implicit`", "`none`")
    assert rows["upstreams.NAME.imap.port"] == ("integer", "required")
    assert rows["logging.hash_key"] == ("secret", "none")
