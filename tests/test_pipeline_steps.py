"""pipeline/steps.py, the component bodies: artifact paths become config overrides after the user's,
failures name the command, metrics and reports are built from the step's files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline import launcher, steps, trainjob


def test_artifact_paths_come_after_the_users_overrides():
    argv = steps.component_argv("/app/params.yaml", ["train.lr_g=2e-4", "train.out_dir=/elsewhere"],
                                {"train.out_dir": "/artifacts/model"})
    assert argv == ["--params", "/app/params.yaml", "-S", "train.lr_g=2e-4", "-S", "train.out_dir=/elsewhere",
                    "-S", "train.out_dir=/artifacts/model"]  # the last -S wins: the artifact path


def test_malformed_override_is_refused():
    with pytest.raises(ValueError, match="'train.lr_g' is not KEY=VALUE"):
        steps.component_argv("p.yaml", ["train.lr_g"], {})


def test_a_failing_step_names_its_command(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(steps.StepError, match=rf"python -m components.train_judge --params {missing} .*status 2"):
        steps.run_component("train_judge", ["--params", str(missing)])
    with pytest.raises(trainjob.TrainJobError, match="components.train exited with status 2"):
        launcher.run_in_process(["--params", str(missing)], nproc=1)


def test_stopped_training_fails_the_step_so_that_it_is_retried(tmp_path):
    (tmp_path / "metrics.json").write_text('{"steps": 40, "total_steps": 100, "stopped_early": true}')
    with pytest.raises(steps.StepError, match="stopped at step 40 of 100.*retry resumes"):
        steps._finished_training(tmp_path)


def test_numeric_metrics_are_flattened_without_booleans():
    values = steps.numeric({"a": 1, "b": {"c": 0.5, "d": "text"}, "ok": True, "unavailable": {"fid": "no weights"}})
    assert values == {"a": 1.0, "b.c": 0.5}


def test_the_evaluate_step_reports_the_gate_checks_and_no_champion(tmp_path, monkeypatch):
    """The gate's verdict by its named fields: the checks of the gate, never the register step's champion line."""
    from eval_fixtures import GOOD_METRICS, tiny_config, write_params

    params = write_params(tiny_config(tmp_path), tmp_path)
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "metrics.json").write_text(json.dumps({**GOOD_METRICS, "fd_judge_generated": 5.0}))
    ran = []
    monkeypatch.setattr(steps, "run_component", lambda name, argv: ran.append(name))  # the evaluation already ran
    values, passed, checks = steps.evaluate(str(params), [], "prepared", "judge", "model", str(eval_dir))
    assert ran == ["evaluate"] and values["fd_judge_generated"] == 5.0 and not passed
    assert checks == ["PASS judge mIoU: generated 0.5000 must be >= 0.6 x real 0.6000 = 0.3600",
                      "FAIL judge Fréchet distance: generated 5.0000 must be < mean-colour baseline 4.0000"]


def test_reports(tmp_path):
    (tmp_path / "figures").mkdir()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "figures" / "samples<1>.png")
    page = steps.images_html(tmp_path, "grid & maps")
    assert page.count("data:image/png;base64,") == 1 and "samples&lt;1&gt;" in page and "grid &amp; maps" in page
    assert "no images were written" in steps.images_html(tmp_path / "figures" / "none", "t")
    text = steps.metrics_markdown("Eval", {"b": 0.25, "a": 1.0}, ["gate passed"])
    assert text.splitlines()[2:6] == ["| metric | value |", "|---|---|", "| a | 1 |", "| b | 0.25 |"]
    assert text.endswith("- gate passed\n")


def test_the_prepare_step_leaves_no_generated_raw_data_behind(tmp_path, monkeypatch):
    """The synthetic raw images live in a scratch folder only until they are sharded."""
    from eval_fixtures import tiny_config, write_params

    params = write_params(tiny_config(tmp_path), tmp_path)
    scratch_root = tmp_path / "scratch"
    scratch_root.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch_root))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    values = steps.prepare(str(params), [], str(tmp_path / "prepared"))
    assert values["rows_train"] > 0 and (tmp_path / "prepared" / "manifest.json").is_file()
    assert list(scratch_root.iterdir()) == []
