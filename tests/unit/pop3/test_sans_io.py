"""proxy/pop3 is sans-IO: it must not import trio, socket or ssl (STYLE §7.1)."""

from __future__ import annotations

import ast
from pathlib import Path

import proxy.pop3

FORBIDDEN = {"trio", "socket", "ssl", "asyncio", "selectors"}
PACKAGE = Path(proxy.pop3.__file__).parent


def _imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.update(a.value.split(".")[0] for a in node.args[:1] if isinstance(a, ast.Constant))
    return names


def test_no_io_imports() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert sources
    for path in sources:
        bad = _imported_modules(ast.parse(path.read_text(), str(path))) & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_modules_stay_small() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name


def test_public_api() -> None:
    from proxy.pop3 import (  # noqa: F401
        NEED_DATA,
        PREAUTH_LIMITS,
        CommandParser,
        Limits,
        ProtocolError,
        ResponseParser,
        events,
        is_multiline,
        writer,
    )

    assert set(proxy.pop3.__all__) >= {"CommandParser", "ResponseParser", "writer", "events"}
    for name in events.__all__:
        assert hasattr(events, name)
