"""The layer picture has no arrow pointing up (DESIGN.md, CONTRIBUTING.md).

Every `proxy` module is assigned the layer of its top-level package (or module); an import of
another package is allowed only into a strictly lower layer. Two packages on the same layer
(relay and gateway) never import each other. The sans-IO rule for proxy/imap and proxy/pop3
(no trio, socket or ssl) is tested beside them (tests/unit/*/test_sans_io.py).
"""

from __future__ import annotations

import ast
import pathlib

import proxy

ROOT = pathlib.Path(proxy.__file__).parent

# Lowest first. "proxy" is the package itself (__version__).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"proxy", "proxy.imap", "proxy.pop3", "proxy.logs", "proxy.certgen",
               "proxy.command_tally", "proxy.metric_labels"}),
    frozenset({"proxy.config"}),
    frozenset({"proxy.metrics", "proxy.collector"}),
    frozenset({"proxy.net"}),
    frozenset({"proxy.store", "proxy.routing"}),
    frozenset({"proxy.oauth2"}),
    frozenset({"proxy.session"}),
    frozenset({"proxy.relay", "proxy.gateway"}),
    frozenset({"proxy.health", "proxy.preflight", "proxy.keygen", "proxy.admin",
               "proxy.admin_cli"}),
    frozenset({"proxy.accounts_cli"}),
    frozenset({"proxy.app"}),
    frozenset({"proxy.workers"}),
    frozenset({"proxy.cli"}),
    frozenset({"proxy.__main__"}),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: pathlib.Path) -> str:
    parts = ["proxy", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path, name: str | None = None) -> set[str]:
    """Absolute names of the proxy modules `path` (module `name`) imports, relative imports
    resolved."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # `from .. import logs`: each name is a module
                    found.update(f"{target}.{alias.name}" for alias in node.names)
                    continue
            else:
                target = node.module or ""
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {f for f in found if f == "proxy" or f.startswith("proxy.")}


def layer_of(module: str) -> str:
    """The entry of LAYERS a module belongs to: its top-level package, or itself."""
    top = ".".join(module.split(".")[:2])
    return top if top in RANK else "proxy"


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        source = module_name(path)
        own = layer_of(source)
        for target in sorted(imports(path)):
            other = layer_of(target)
            if other != own and RANK[other] >= RANK[own]:
                bad.append(f"{source} imports {target} ({other} is not below {own})")
    return bad


def test_every_package_has_a_layer() -> None:
    tops = {layer_of(module_name(p)) for p in ROOT.rglob("*.py")}
    named = {".".join(module_name(p).split(".")[:2]) for p in ROOT.rglob("*.py")}
    assert named - set(RANK) <= {"proxy.__init__"}, sorted(named - set(RANK))
    assert tops <= set(RANK)


def test_no_import_points_up() -> None:
    assert upward_imports() == []


def test_net_below_session_below_relay_and_gateway() -> None:
    assert RANK["proxy.net"] < RANK["proxy.session"] < RANK["proxy.relay"]
    assert RANK["proxy.relay"] == RANK["proxy.gateway"]  # so neither may import the other


def test_the_scanner_sees_an_upward_import(tmp_path: pathlib.Path) -> None:
    fake = tmp_path / "x.py"
    fake.write_text("from ..relay.imap_session import handle\nfrom .. import logs\n"
                    "import proxy.session.context\n")
    found = imports(fake, "proxy.net.x")
    assert found == {"proxy.relay.imap_session", "proxy.logs", "proxy.session.context"}
    assert [RANK[layer_of(f)] > RANK["proxy.net"] for f in sorted(found)] == [False, True, True]
