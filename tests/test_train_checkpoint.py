"""Checkpoints: atomic writes, keep_last, weights_only loading, exact resume, SIGTERM, NaN."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from train_fixtures import tiny_config, tiny_settings, write_prepared

import dagan.train.steps
from dagan.checkpoint import FORMAT_VERSION, load_checkpoint, load_generator, load_latest_checkpoint, save_checkpoint
from dagan.train import NonFiniteLossError, NullLogger, train

KEYS = {"format_version", "config", "semantic_nc", "num_label_channels", "generator", "discriminator", "ema",
        "optimizer_g", "optimizer_d", "scaler", "step", "epoch", "rng"}
TESTS = Path(__file__).resolve().parent


def subprocess_env() -> dict[str, str]:
    """Same thread count as this process now: float reductions (and so the weights) depend on it."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data") / "prepared", num_train=8)


def _tensors(state, prefix=""):
    """Flatten nested dicts/lists of a checkpoint into {path: tensor or value}."""
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return {prefix: state}
    flat = {}
    for key, value in items:
        flat.update(_tensors(value, f"{prefix}/{key}"))
    return flat


def _assert_same_training_state(a: dict, b: dict) -> None:
    for part in ("generator", "discriminator", "ema", "optimizer_g", "optimizer_d", "step", "epoch"):
        left, right = _tensors(a[part]), _tensors(b[part])
        assert left.keys() == right.keys(), part
        for key, value in left.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, right[key]), f"{part}{key} differs"
            else:
                assert value == right[key], f"{part}{key}: {value} != {right[key]}"


def test_checkpoints_keep_last_and_load_with_weights_only(prepared, tmp_path):
    config = tiny_config(prepared, tmp_path / "out", max_steps=7, ema_decay=0.9)
    result = train(config)
    folder = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["final.pt", "step-00000004.pt", "step-00000006.pt"]
    assert result.step == 7 and result.checkpoint == folder / "final.pt"
    state = torch.load(folder / "final.pt", weights_only=True)
    assert set(state) == KEYS
    assert state["step"] == 7 and state["epoch"] == 1 and state["semantic_nc"] == 5
    assert state["config"]["model"]["ngf"] == 8 and state["ema"] is not None
    assert load_latest_checkpoint(tmp_path / "out")[0] == folder / "final.pt"
    generator, loaded_config, semantic_nc = load_generator(folder / "final.pt")
    assert semantic_nc == 5 and loaded_config == config and not generator.training
    assert all(torch.equal(v, state["ema"][k]) for k, v in generator.state_dict().items())
    raw_generator, _, _ = load_generator(folder / "final.pt", use_ema=False)
    assert all(torch.equal(v, state["generator"][k]) for k, v in raw_generator.state_dict().items())


def test_a_checkpoint_of_earlier_code_with_the_steps_sections_still_loads(tmp_path):
    """Checkpoints used to store the steps' mlflow, register and tune sections too; they are dropped when read."""
    from dagan.generator import build_generator

    config = tiny_config(tmp_path / "prepared", tmp_path / "out")
    stored = {**config.to_dict(), "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "dagan"},
              "register": {"metric": "judge_miou_generated", "out_dir": "outputs/register"},
              "tune": {"num_samples": 8, "search_space": {"model": {"variant": {"type": "choice", "values": ["B1"]}}}}}
    weights = build_generator(config, 5, 4).state_dict()
    path = save_checkpoint({"format_version": FORMAT_VERSION, "config": stored, "semantic_nc": 5,
                            "num_label_channels": 4, "generator": weights, "discriminator": {}, "ema": None},
                           tmp_path / "old.pt")
    generator, loaded_config, _ = load_generator(path)
    assert loaded_config == config and all(torch.equal(v, weights[k]) for k, v in generator.state_dict().items())


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "step-00000001.pt"
    save_checkpoint({"format_version": 1, "step": 1}, target)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format_version": 1, "step": 2}, target)
    assert load_checkpoint(target)["step"] == 1  # the old file is intact
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left behind


PAUSING_RUN = textwrap.dedent("""
    import sys, time
    from dagan.config import config_from_dict
    from dagan.train import NullLogger, train
    import json

    class PauseAt(NullLogger):
        def should_stop(self, report):
            if report.step == 5:
                print("PAUSED", flush=True)
                time.sleep(600)
            return False

    settings = json.loads(sys.argv[1])
    train(config_from_dict(settings, "test").resolved(), PauseAt())
""")


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(prepared, tmp_path):
    overrides = {"max_steps": 7, "checkpoint_every": 3, "ema_decay": 0.9, "ema_rampup": 0.5, "ema_bn_batches": 2}
    train(tiny_config(prepared, tmp_path / "straight", **overrides))

    import json
    settings = tiny_settings(prepared, tmp_path / "killed", **overrides)
    process = subprocess.Popen([sys.executable, "-c", PAUSING_RUN, json.dumps(settings)], stdout=subprocess.PIPE,
                               text=True, env=subprocess_env())
    try:
        assert process.stdout.readline().strip() == "PAUSED"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    folder = tmp_path / "killed" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000003.pt"]

    result = train(tiny_config(prepared, tmp_path / "killed", **overrides))  # resumes automatically
    assert result.resumed_from == folder / "step-00000003.pt" and result.step == 7
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "final.pt")
    resumed = load_checkpoint(folder / "final.pt")
    _assert_same_training_state(straight, resumed)
    statistics = [key for key in straight["ema"] if key.endswith("running_mean")]
    assert statistics and not any(torch.equal(straight["ema"][k], straight["generator"][k]) for k in statistics)


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(prepared, tmp_path, monkeypatch):
    real_loss = dagan.train.steps.g_hinge_loss
    calls = []

    def poisoned(outputs):
        calls.append(1)
        loss = real_loss(outputs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(dagan.train.steps, "g_hinge_loss", poisoned)
    config = tiny_config(prepared, tmp_path / "out", max_steps=6)
    good = tmp_path / "out" / "checkpoints" / "step-00000002.pt"
    with pytest.raises(NonFiniteLossError, match=r"at step 3: g_gan=nan.*last good checkpoint: .*step-00000002\.pt"):
        train(config)
    assert [p.name for p in good.parent.iterdir()] == [good.name]
    assert load_checkpoint(good)["step"] == 2


class StopAfter(NullLogger):
    def __init__(self, step: int):
        self.step = step
        self.checkpoints: list[tuple[int, Path]] = []

    def on_checkpoint(self, step, path):
        self.checkpoints.append((step, path))

    def should_stop(self, report):
        return report.step == self.step


def test_should_stop_ends_the_run_with_a_checkpoint(prepared, tmp_path):
    logger = StopAfter(3)
    result = train(tiny_config(prepared, tmp_path / "out", max_steps=6, checkpoint_every=100), logger)
    assert result.stopped_early and result.step == 3
    assert logger.checkpoints == [(3, tmp_path / "out" / "checkpoints" / "step-00000003.pt")]


def test_ccfpse_with_fpse_resumes_exactly(tmp_path):
    """CC-FPSE's generator (frozen unused norms included) and the FPSE discriminator resume like DAGAN."""
    from dagan.config import config_from_dict

    prepared = write_prepared(tmp_path / "prepared", num_train=8, size=64)

    def config(out: str, steps: int):
        settings = tiny_settings(prepared, tmp_path / out, max_steps=steps, checkpoint_every=1, ema_decay=0.5)
        settings["dataset"].update(load_size=64, crop_size=64)
        settings["model"].update(generator="ccfpse", discriminator="fpse")
        return config_from_dict(settings, "tiny").resolved()

    train(config("straight", 2))
    train(config("resumed", 1))
    result = train(config("resumed", 2))
    assert result.resumed_from is not None and result.step == 2
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "final.pt")
    _assert_same_training_state(straight, load_checkpoint(tmp_path / "resumed" / "checkpoints" / "final.pt"))
    assert any(".unused_norms." in key for key in straight["generator"])
