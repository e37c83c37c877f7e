"""The house's import rules, checked on the source (no imports run):

1. Layers: ``schemas`` <- ``attribution`` <- ``pipeline`` <- ``jobs``; a module imports
   tda's own modules only from its layer or the layers before it.
2. Inside ``attribution/``, sub-packages follow the flow: ``io`` <- ``corpus`` <-
   ``encoders`` <- ``index`` <- ``stages`` <- ``curation``; the attributor and the other
   top-level modules of ``attribution/`` may import any of them, no sub-package imports a
   top-level module.
3. Third-party: only ``pipeline/`` and ``jobs/`` import Beam; ``schemas/`` imports no
   heavy library.
4. No import cycle anywhere among tda's modules, counting imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["schemas", "attribution", "pipeline", "jobs"]
SUBPACKAGES = ["io", "corpus", "encoders", "index", "stages", "curation"]
FORBIDDEN_THIRD_PARTY = {
    "schemas": {"apache_beam", "torch", "faiss", "tokenizers", "tiktoken", "fsspec"},
    "attribution": {"apache_beam"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["tda", *parts])


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved; for
    ``from X import y``, ``X.y`` when that is a module of ours, else ``X``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub.startswith("tda.") and _is_module(sub) else module)
    return found


def _sources() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _sources()}
    return {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_only_go_down(layer):
    allowed = {f"tda.{name}" for name in LAYERS[: LAYERS.index(layer) + 1]}
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files
    for path in files:
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] == "tda" and len(parts) > 1 and parts[1] in LAYERS:
                assert ".".join(parts[:2]) in allowed, f"{path.relative_to(ROOT)} imports {module}"
            assert parts[0] not in FORBIDDEN_THIRD_PARTY.get(layer, set()), (
                f"{path.relative_to(ROOT)} imports {module}"
            )


def test_attribution_subpackages_follow_the_flow():
    checked = 0
    for path in sorted((ROOT / "attribution").rglob("*.py")):
        parts = path.relative_to(ROOT / "attribution").parts
        if len(parts) == 1:  # top-level modules (the attributor...) may import any sub-package
            continue
        own = SUBPACKAGES.index(parts[0])
        for module in _imports(path):
            bits = module.split(".")
            if bits[:2] != ["tda", "attribution"] or len(bits) < 3:
                continue
            checked += 1
            assert bits[2] in SUBPACKAGES, f"{path.relative_to(ROOT)} imports top-level {module}"
            assert SUBPACKAGES.index(bits[2]) <= own, (
                f"{path.relative_to(ROOT)} imports {module}: {parts[0]}/ comes before {bits[2]}/"
            )
    assert checked > 20


def test_every_subpackage_says_what_it_holds():
    for init in sorted(ROOT.glob("*/**/__init__.py")):
        if init.parts[len(ROOT.parts)] not in LAYERS:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 30, f"{init.relative_to(ROOT)} has no docstring"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_anywhere():
    graph = _graph()
    assert len(graph) > 50
    assert _cycles(graph) == []
