"""Where tests live: `make test-fast` and the suites' fast run collect tests/unit only, so a test
module anywhere else must be an end-to-end one (marked `e2e` for the whole module), or it would
never run in the fast run."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def marks_whole_module_e2e(path: Path) -> bool:
    """True when the module assigns `pytestmark` a value that names the e2e mark."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            return any(isinstance(n, ast.Attribute) and n.attr == "e2e" for n in ast.walk(node.value))
    return False


def test_every_test_module_outside_tests_unit_is_end_to_end() -> None:
    outside = [p for p in TESTS.rglob("test_*.py") if TESTS / "unit" not in p.parents]
    assert outside, "no end-to-end test module found: the layout changed, and so must this test"
    unmarked = sorted(str(p.relative_to(TESTS)) for p in outside if not marks_whole_module_e2e(p))
    assert unmarked == [], f"not collected by the fast run (move them to tests/unit, or mark them e2e): {unmarked}"


def test_the_check_sees_a_module_without_the_mark(tmp_path: Path) -> None:
    plain = tmp_path / "test_plain.py"
    plain.write_text("import pytest\npytestmark = pytest.mark.timeout(5)\n\ndef test_x():\n    pass\n")
    marked = tmp_path / "test_marked.py"
    marked.write_text("import pytest\npytestmark = [pytest.mark.e2e, pytest.mark.timeout(5)]\n")
    assert not marks_whole_module_e2e(plain)
    assert marks_whole_module_e2e(marked)
