"""The TrainJob nodes' default grace period follows the measured SIGTERM-to-checkpoint time (bench/preemption.py):
the recorded result asks for no more than ``pipeline.trainjob.DEFAULT_GRACE_S``. No timing is measured here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is scripts at the repo root, not installed
from bench import preemption  # noqa: E402
from pipeline.trainjob import DEFAULT_GRACE_S  # noqa: E402

RESULT = Path(preemption.__file__).parent / "results" / "preemption.json"


def test_the_grace_rule_doubles_the_worst_cpu_time_to_exit_and_rounds_up_to_half_minutes():
    runs = [{"sigterm_to_exit_s": 400.0, "sigterm_to_exit_cpu_s": seconds} for seconds in (20.0, 41.0, 33.5)]
    assert preemption.recommended_grace_s({"runs": runs}) == 90  # 2 x 41 = 82 -> 90
    assert preemption.recommended_grace_s({"runs": [{"sigterm_to_exit_cpu_s": 15.0}]}) == 30


def test_the_default_grace_period_covers_the_recorded_measurement():
    result = json.loads(RESULT.read_text())
    assert result["setting"]["dataset"] == "cityscapes" and result["setting"]["variant"] == "B6"
    assert result["setting"]["ngf"] == 64 and result["setting"]["batch_per_process"] == 1
    assert result["recommended_grace_s"] == preemption.recommended_grace_s(result)
    assert DEFAULT_GRACE_S >= result["recommended_grace_s"], (
        f"bench/results/preemption.json asks for {result['recommended_grace_s']} s of grace; raise "
        "pipeline.trainjob.DEFAULT_GRACE_S (and the number in docs/KUBEFLOW.md)")


def test_the_cityscapes_like_scenes_use_the_cityscapes_layout(tmp_path):
    preemption.write_cityscapes_like(tmp_path, scenes=2, width=64, height=32)
    labels = sorted((tmp_path / "gtFine" / "train" / "bench").glob("*_gtFine_labelIds.png"))
    instances = sorted((tmp_path / "gtFine" / "train" / "bench").glob("*_gtFine_instanceIds.png"))
    photos = sorted((tmp_path / "leftImg8bit" / "train" / "bench").glob("*_leftImg8bit.png"))
    assert len(labels) == len(instances) == len(photos) == 2
    from dagan.data.importers import import_cityscapes

    _, pairs = import_cityscapes(tmp_path)
    assert len(pairs) == 2, "the project's Cityscapes importer reads them"
