"""bench.make_targets: the README's two commands timed, and make run's results as the README quotes them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is scripts at the repo root, not installed
from bench import make_targets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = """\
venv:
\t@echo installed
run:
\t@echo "Running stage 'synthesize':"; sleep 0.3; echo "Running stage 'train':"; sleep 0.6; echo done
test:
\t@echo "=========== 5 passed, 2 skipped, 1 warning in 3.21s ==========="
broken:
\t@echo oops; exit 3
"""


@pytest.fixture
def project(tmp_path):
    """A folder with a Makefile of the same targets, and the outputs make run leaves (from the committed ones)."""
    (tmp_path / "Makefile").write_text(MAKEFILE)
    for name in make_targets.RUN_OUTPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text())
    return tmp_path


def test_make_run_records_each_stage_and_the_outputs_the_readme_quotes(project):
    result = make_targets.measure("run", project)
    assert list(result["stages_s"]) == ["synthesize", "train"]
    assert 0.2 < result["stages_s"]["synthesize"] < result["stages_s"]["train"]
    assert result["total_s"] >= result["target_s"] >= sum(result["stages_s"].values()) - 0.2
    committed = json.loads((ROOT / "outputs/eval/metrics.json").read_text())
    assert result["outputs"]["eval"]["judge_miou_generated"] == committed["judge_miou_generated"]
    assert set(result["outputs"]) == {"train", "eval", "register"}


def test_make_test_records_pytests_counts(project):
    result = make_targets.measure("test", project)
    assert (result["passed"], result["skipped"]) == (5, 2)


def test_a_failing_target_stops_without_a_result(project):
    with pytest.raises(SystemExit, match="make broken.* exited 2"):
        make_targets.stream(["make", "broken"], project)


def test_the_readmes_results_are_those_of_the_committed_outputs():
    """bench/results/make_run.json (the README's table) and the DVC outputs in git come from the same make run."""
    recorded = json.loads((ROOT / "bench/results/make_run.json").read_text())["outputs"]
    for name, keys in make_targets.RUN_OUTPUTS.items():
        committed = json.loads((ROOT / name).read_text())
        assert recorded[Path(name).parent.name] == {key: committed[key] for key in keys}, name
