"""Imports only go down the layers: schemas <- attribution <- pipeline <- jobs; only
pipeline/ and jobs/ import Beam; heavy libraries are never imported by schemas/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["schemas", "attribution", "pipeline", "jobs"]
FORBIDDEN_THIRD_PARTY = {
    "schemas": {"apache_beam", "torch", "faiss", "tokenizers", "tiktoken", "fsspec"},
    "attribution": {"apache_beam"},
}


def _imports(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against tda.<package>
                base = ["tda", package][: max(0, 2 - (node.level - 1))]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                found.add(node.module)
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_only_go_down(layer):
    allowed = {f"tda.{name}" for name in LAYERS[: LAYERS.index(layer) + 1]}
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files
    for path in files:
        for module in _imports(path, layer):
            parts = module.split(".")
            if parts[0] == "tda" and len(parts) > 1 and parts[1] in LAYERS:
                assert ".".join(parts[:2]) in allowed, f"{path.relative_to(ROOT)} imports {module}"
            assert parts[0] not in FORBIDDEN_THIRD_PARTY.get(layer, set()), (
                f"{path.relative_to(ROOT)} imports {module}"
            )
