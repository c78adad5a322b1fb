"""The import layers of kod/__init__.py hold: `kod` is innermost and the outer packages never
import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kod", "vk_bridge", "interlink", "sidecars", "cloudify", "localenv")
#: What each package may import from the project, besides itself.
ALLOWED: dict[str, set[str]] = {
    "kod": set(),
    "vk_bridge": {"kod"},
    "interlink": {"kod"},
    "sidecars": {"kod"},
    "cloudify": {"kod"},
    "localenv": {"kod"},
}


def _project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_inner_layers(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        extra = _project_imports(path) - ALLOWED[package] - {package}
        if extra:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(extra)}")
    assert not bad, "layer violations:\n" + "\n".join(bad)
