"""The layout: the product packages import no test machinery and have no import circle.

Every import counts, also one inside a function or under TYPE_CHECKING: a lazy import that
dodges a circle at start-up is still a circle in the design.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# package name -> its folder (pyproject.toml's package-dir)
PACKAGES = {"reranker": ROOT / "reranker", "gateway": ROOT / "gateway",
            "modelservice": ROOT / "operator" / "modelservice"}


def module_name(package: str, path: Path) -> str:
    parts = [package, *path.relative_to(PACKAGES[package]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p, f): f for p, d in PACKAGES.items() for f in sorted(d.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that module `name` (at `path`) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            # `import a.b.c` imports a.b.c; the packages above it count only through their
            # __init__, which has nothing to import here, so the deepest known module is enough.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_sees_relative_lazy_and_type_checking_imports():
    graph = import_graph()
    assert "modelservice.api.models" in graph["modelservice.controller.handlers"]      # from ..api.models
    assert "gateway.scaling" in graph["gateway.registry"]                              # TYPE_CHECKING
    assert "modelservice.placement.builders" in graph["modelservice.__main__"]         # inside main()
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_in_the_product_packages():
    assert circles(import_graph()) == []


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_product_packages_import_no_test_machinery(package):
    offenders = []
    for path in PACKAGES[package].rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in ("testkit", "tests", "pytest", "hypothesis")]
    assert offenders == []


# What the product must never hold again: a test-only way to send pods' traffic elsewhere
# (issue 23). Simulated pods are reached at loopback through testkit.loopback, which replaces
# the product's own pod-address seams from outside.
ADDRESS_HOOK = re.compile(r"address[-_ ]?overrides?|addressoverrides|loopback[-_ ]?addresses", re.IGNORECASE)
# The product's places: its packages with their READMEs, the chart, the images.
PRODUCT_PLACES = [*PACKAGES.values(), ROOT / "charts", ROOT / "images"]


def test_no_address_override_hook_in_the_product():
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for place in PRODUCT_PLACES for path in sorted(place.rglob("*"))
            if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".yml", ".tpl", ".txt", ".json", ""}
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if ADDRESS_HOOK.search(line)]
    assert hits == [], "an address-override hook is back in the product"


def test_the_gateway_and_the_operator_take_no_address_setting():
    from gateway.settings import Settings
    from modelservice.__main__ import parse_args

    assert [name for name in Settings.model_fields if "address" in name or "override" in name] == []
    with pytest.raises(SystemExit):
        parse_args(["--address-overrides=/tmp/addresses.json"])
