"""Config errors in the project's own words, not the validator's.

Pydantic reports `('listeners', 0, 'adress')  Unexpected keyword argument`; an operator wants
"unknown key 'adress' in listeners[0]; did you mean 'address'?". `describe()` turns one pydantic
error into (location, message): it walks the config's dataclass types along the error's location
to learn which keys and choices were allowed there, so a near miss gets a suggestion (difflib).
Values are echoed only for type errors, shortened, and never under a key that holds a secret.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

Loc = tuple[str | int, ...]

_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
    "dict_type": "a mapping (key: value)", "dataclass_type": "a mapping (key: value)",
    "dataclass_args_type": "a mapping (key: value)", "model_type": "a mapping (key: value)",
    "tuple_type": "a list", "list_type": "a list", "path_type": "a file path",
}
_SECRET_WORDS = ("key", "secret", "password", "token")
_ECHO_LIMIT = 40


def dotted_path(loc: Loc) -> str:
    """`('listeners', 0, 'tls')` -> `listeners[0].tls`; the empty location is `the top level`."""
    text = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    return text or "the top level"


def clean_loc(loc: tuple[Any, ...]) -> Loc:
    """Drop pydantic's validator steps (`function-plain[...]`) from a location."""
    loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
    # a tagged union (lookups) repeats its tag: `lookups.0.http.http.url` -> `lookups.0.http.url`
    return tuple(p for i, p in enumerate(loc) if not (i and isinstance(p, str) and p == loc[i - 1]))


def describe(error: Mapping[str, Any], root: type) -> tuple[Loc, str]:
    """One pydantic error -> (location, message in our words)."""
    loc = clean_loc(error["loc"])
    kind = error["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden") and loc:
        key, parent = str(loc[-1]), loc[:-1]
        return loc, f"unknown key {key!r} in {dotted_path(parent)}" + _suggest(key, _keys(root, parent))
    if kind in ("missing", "missing_argument", "missing_keyword_only_argument") and loc:
        return loc, f"missing required key {str(loc[-1])!r} in {dotted_path(loc[:-1])}"
    if kind == "literal_error":
        choices = [str(c) for c in _choices(root, loc)]
        got = error.get("input")
        text = f"{dotted_path(loc)}: expected one of {', '.join(choices)}; got {_echo(loc, got)}"
        return loc, text + _suggest(str(got), choices)
    if kind == "value_error":
        ctx_error = (error.get("ctx") or {}).get("error")
        return loc, f"{dotted_path(loc)}: {ctx_error if ctx_error is not None else error['msg']}"
    if kind in _EXPECTED:
        return loc, f"{dotted_path(loc)}: expected {_EXPECTED[kind]}, got {_echo(loc, error.get('input'))}"
    return loc, f"{dotted_path(loc)}: {error['msg']}"


def _echo(loc: Loc, value: Any) -> str:
    if any(isinstance(p, str) and any(w in p.lower() for w in _SECRET_WORDS) for p in loc):
        return "a value that is not shown"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= _ECHO_LIMIT else text[:_ECHO_LIMIT] + "..."


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unwrap(tp: Any) -> Any:
    """`X | None` -> X (a single non-None member)."""
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        return members[0] if len(members) == 1 else tp
    return tp


def type_at(root: type, loc: Loc) -> Any:
    """The declared type of the value at `loc`, or None when the location leaves the schema."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if dataclasses.is_dataclass(tp) and isinstance(part, str):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return None
            tp = hints[part]
        elif get_origin(tp) is tuple and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    return _unwrap(tp)


def _keys(root: type, loc: Loc) -> list[str]:
    tp = type_at(root, loc)
    return [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []


def _choices(root: type, loc: Loc) -> list[Any]:
    tp = type_at(root, loc)
    return list(get_args(tp)) if get_origin(tp) is Literal else []
