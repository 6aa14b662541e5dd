"""The package layout the README promises: no file imports a file that imports it back,
``models`` and ``guides`` never import each other, and every family sub-package has the
same shape from outside (engines, ``sections.py``, ``command.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"infer": "posterity.infer", "models": "posterity.models",
            "guides": "posterity.guides", "layers": "posterity.layers",
            "datasets": "posterity.datasets"}
FAMILIES = ("amortized", "wake_sleep", "smc", "sgmcmc")


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The posterity modules that ``name`` imports anywhere in its file (module level
    or inside functions, but not under ``if TYPE_CHECKING:``), resolved to files."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING"
                   for inner in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts))}


def test_no_file_imports_a_file_that_imports_it_back():
    graph = _graph()
    # A package's __init__ re-exports its modules; a module importing a sibling through
    # its own package is not a cycle of files, so edges into ancestors are left out.
    edges = {a: {b for b in targets if b not in _ancestors(a)} for a, targets in graph.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, target", [("models", "guides"), ("guides", "models"),
                                            ("models", "infer"), ("guides", "infer"),
                                            ("layers", "models"), ("layers", "guides")])
def test_root_packages_do_not_import_each_other(source, target):
    graph = _graph()
    offenders = sorted(f"{a} -> {b}" for a, targets in graph.items()
                       if a.startswith(PACKAGES[source]) for b in targets
                       if b.startswith(PACKAGES[target]))
    assert not offenders, offenders


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_registers_its_sections_and_its_command(family):
    folder = ROOT / "infer" / family
    assert (folder / "sections.py").is_file() and (folder / "command.py").is_file()
    command = (folder / "command.py").read_text()
    assert "COMMAND = Command(" in command
    sections = (folder / "sections.py").read_text()
    assert "register_section" in sections


def test_the_report_page_knows_no_family_by_name():
    source = (ROOT / "infer" / "report.py").read_text()
    for family in FAMILIES:
        assert f"posterity.infer.{family}" not in source and f".{family} " not in source
