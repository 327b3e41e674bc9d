"""bench.seeds: the documented repeat of train + evaluate over training seeds, on a tiny dataset."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from eval_fixtures import NUM_CLASSES, tiny_config, write_params, write_prepared

from dagan.eval.judge import SegmentationNet, save_judge

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is scripts at the repo root, not installed
from bench import seeds  # noqa: E402


def test_one_seed_is_trained_evaluated_gated_and_kept_for_the_next_call(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(seeds, "ROOT", tmp_path / "seeds")
    write_prepared(tmp_path / "prepared")
    config = tiny_config(tmp_path, train={"max_steps": 2})
    params = write_params(config, tmp_path)
    save_judge(tmp_path / "judge" / "judge.pt", SegmentationNet(3, NUM_CLASSES, 8, 2), config, NUM_CLASSES)

    assert seeds.main(["--params", str(params), "--name", "tiny", "--seeds", "3", "-S", "loss.lambda_feat=5"]) == 0
    row, = json.loads((tmp_path / "seeds" / "tiny" / "seeds.json").read_text())["rows"]
    metrics = json.loads((tmp_path / "seeds" / "tiny" / "seed-3" / "eval" / "metrics.json").read_text())
    trained = yaml.safe_load((tmp_path / "seeds" / "tiny" / "seed-3" / "train" / "config.yaml").read_text())
    assert trained["train"]["seed"] == 3 and trained["loss"]["lambda_feat"] == 5.0
    assert row["seed"] == 3 and row["steps"] == 2 and row["overrides"] == ["loss.lambda_feat=5"]
    assert row["fd_ratio"] == pytest.approx(metrics["fd_judge_generated"] / metrics["fd_judge_baseline"], abs=1e-4)
    assert row["gate_passed"] == (metrics["judge_miou_generated"] >= 0.6 * metrics["judge_miou_real"]
                                  and metrics["fd_judge_generated"] < metrics["fd_judge_baseline"])
    assert "| 3 | 2 |" in capsys.readouterr().out

    assert seeds.main(["--params", str(params), "--name", "tiny", "--seeds", "3", "-S", "loss.lambda_feat=5"]) == 0
    assert "kept from" in capsys.readouterr().err  # not trained again
    assert seeds.main(["--params", str(params), "--name", "tiny", "--seeds", "3"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert seeds.main(["--report", "tiny"]) == 0 and "### tiny" in capsys.readouterr().out
