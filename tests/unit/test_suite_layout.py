"""The suite's own layout: pytest imports test modules by basename (rootdir-relative, no packages), so two
test files with one name in different folders stop the whole run at collection ("import file
mismatch"). tests/README.md promises unique names; this holds it."""

from __future__ import annotations

from collections import Counter

from support import ROOT


def test_test_file_names_are_unique_across_folders() -> None:
    names = Counter(path.name for path in (ROOT / "tests").rglob("test_*.py"))
    assert [name for name, seen in names.items() if seen > 1] == []
