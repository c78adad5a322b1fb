"""The docs back their claims by naming tests (docs/security.md names one for every sentence): a
test that is renamed or removed must not leave a claim that points at nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: A test's or a test module's name, not a glob such as `test_cloudify_*.py`.
CITED = re.compile(r"\b(test_[A-Za-z0-9_]*[A-Za-z0-9])(?![A-Za-z0-9_*])")
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def defined_tests() -> tuple[set[str], set[str]]:
    """The test functions defined anywhere under tests/, and the test modules' names."""
    functions: set[str] = set()
    modules: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        functions |= set(re.findall(r"def (test_\w+)", path.read_text()))
        if path.name.startswith("test_"):
            modules.add(path.stem)
    return functions, modules


def test_the_pattern_sees_names_and_skips_globs() -> None:
    text = "see `test_a_b` and test_mod.py, `test_x[param]`, not `test_cloudify_*.py`"
    assert CITED.findall(text) == ["test_a_b", "test_mod", "test_x"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_test_a_doc_names_exists(doc: Path) -> None:
    functions, modules = defined_tests()
    missing = sorted({name for name in CITED.findall(doc.read_text()) if name not in functions | modules})
    assert not missing, f"{doc.relative_to(ROOT)} names tests that do not exist: {missing}"


def test_the_security_page_names_a_test_in_every_section() -> None:
    sections = re.split(r"\n## ", (ROOT / "docs" / "security.md").read_text())[1:]
    # Sections that describe, rather than claim, are the exceptions, by name.
    unbacked = [s.splitlines()[0] for s in sections if not CITED.search(s)]
    assert not unbacked, f"docs/security.md sections that name no test: {unbacked}"
