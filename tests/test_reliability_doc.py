"""docs/RELIABILITY.md names, for each promise, tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_test_cited_by_docs_reliability_exists():
    """Each promise of docs/RELIABILITY.md names its tests: the files exist, and each named test function (a prefix
    where the name ends in '...') is defined in one of the files its row cites."""
    text = (REPO / "docs" / "RELIABILITY.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| **")]
    assert len(rows) >= 10
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[1]
        files = re.findall(r"tests/[\w/]+\.py", cell)
        assert files, row[:60]
        sources = "".join((REPO / file).read_text() for file in files)
        for name, prefix in re.findall(r"(test_\w+?)(_?\.\.\.)?(?=[`,) ]|$)", cell):
            pattern = rf"def {re.escape(name)}" + (r"\w*\(" if prefix else r"\(")
            assert re.search(pattern, sources), f"{name} is not in {files}"
