"""bench.report: every generated table and number in the docs agrees with bench/results (one source per number)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is scripts at the repo root, not installed
from bench import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_docs_agree_with_bench_results():
    differences = report.stale()
    assert not differences, "run python -m bench.report:\n" + "\n".join(differences.values())


def test_every_results_file_is_shown_or_named_in_the_docs():
    report.LOADED.clear()
    for path in report.documents():  # renders every marker of README.md and docs/*.md
        report.regenerate(path.read_text(), path.name, errors=[])
    text = "".join(path.read_text() for path in report.documents())
    unused = {path.stem for path in report.RESULTS_DIR.glob("*.json")
              if path.stem not in report.LOADED and f"bench/results/{path.name}" not in text}
    assert not unused, f"results no doc shows or names (remove them, or show them): {sorted(unused)}"


@pytest.fixture
def copy_of_the_docs(tmp_path):
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path


def test_a_retyped_number_is_found_and_regenerated(copy_of_the_docs, capsys):
    path = copy_of_the_docs / "docs" / "PERFORMANCE.md"
    text = path.read_text()
    match = next(m for m in report.MARKER.finditer(text) if m["kind"] == "value")
    tampered = text[:match.start("body")] + "9.99" + text[match.end("body"):]
    path.write_text(tampered)
    diff = report.stale_part(path)
    assert diff.startswith("---") and "9.99" in diff
    assert report.regenerate(tampered, "PERFORMANCE.md") == text


def test_markers_name_known_tables_and_existing_values():
    with pytest.raises(report.ReportError, match="unknown; tables"):
        report.render("table", "no-such-table")
    with pytest.raises(report.ReportError, match="does not exist"):
        report.render("value", "no_such_file rows .2f")
    data = {"rows": [{"variant": "B6", "mode": "fp32", "s": 2.5}, {"variant": "B1", "mode": "fp32", "s": 2.0}]}
    assert report.lookup(data, "rows[variant=B1,mode=fp32].s") == 2.0
    with pytest.raises(report.ReportError, match="2 rows match"):
        report.lookup(data, "rows[mode=fp32].s")
    with pytest.raises(report.ReportError, match="no 'x'"):
        report.lookup(data, "x.y")


def test_a_target_is_written_as_met_or_not_met(monkeypatch):
    targets = {"fp32": {"target_met": False, "ratio": 0.8}, "b6": {"target_met": True}}
    monkeypatch.setitem(report.LOADED, "targets", targets)
    assert report.value("targets", "fp32.target_met", "met") == "not met"
    assert report.value("targets", "b6.target_met", "met") == "met"
    with pytest.raises(report.ReportError, match="needs true or false"):
        report.value("targets", "fp32.ratio", "met")


def test_check_exits_1_and_names_the_stale_file(copy_of_the_docs, monkeypatch, capsys):
    path = copy_of_the_docs / "docs" / "PERFORMANCE.md"
    text = path.read_text()
    match = next(report.MARKER.finditer(text))
    path.write_text(text[:match.start("body")] + "stale" + text[match.end("body"):])
    monkeypatch.setattr(report, "ROOT", copy_of_the_docs)
    monkeypatch.setattr(report, "documents", lambda root=copy_of_the_docs: iter([path]))
    assert report.main(["--check"]) == 1
    assert "out of date: docs/PERFORMANCE.md" in capsys.readouterr().err
    assert report.main([]) == 0 and path.read_text() == text


def test_a_part_that_cannot_be_rendered_is_named_and_the_others_are_still_regenerated(copy_of_the_docs, monkeypatch,
                                                                                       capsys):
    path = copy_of_the_docs / "docs" / "PERFORMANCE.md"
    text = path.read_text()
    match = next(m for m in report.MARKER.finditer(text) if m["kind"] == "value")
    broken = "<!-- bench:table no-such-table -->old<!-- /bench -->\n"
    path.write_text(broken + text[:match.start("body")] + "9.99" + text[match.end("body"):])
    monkeypatch.setattr(report, "ROOT", copy_of_the_docs)
    monkeypatch.setattr(report, "documents", lambda root=copy_of_the_docs: iter([path]))
    assert report.main([]) == 2
    assert "docs/PERFORMANCE.md: bench:table no-such-table: unknown" in capsys.readouterr().err
    assert path.read_text() == broken + text
