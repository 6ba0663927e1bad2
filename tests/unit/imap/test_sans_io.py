"""The IMAP core stays sans-IO: no trio, socket or ssl imports (STYLE.md §7.1)."""

from __future__ import annotations

import ast
import pathlib

import proxy.imap

FORBIDDEN = {"trio", "socket", "ssl", "asyncio", "selectors"}
PACKAGE_DIR = pathlib.Path(proxy.imap.__file__).parent


def imported_roots(path: pathlib.Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            roots.add("__import__")
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            roots.add("importlib.import_module")
    return roots


def test_no_io_imports_in_proxy_imap() -> None:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) >= 8
    for path in files:
        bad = imported_roots(path) & (FORBIDDEN | {"__import__", "importlib.import_module"})
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_scanner_detects_forbidden_imports(tmp_path: pathlib.Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import os\nfrom trio import lowlevel\nimport ssl as s\n")
    assert {"trio", "ssl"} <= imported_roots(sample)


def test_modules_stay_small() -> None:
    for path in PACKAGE_DIR.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 420, path.name
