"""Importing official checkpoints refuses damaged files in one line: NaN/Inf weights, a layer of the wrong shape;
a model exported from the built-in synthetic preset imports back with that preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dagan.__main__ import main as dagan_main
from dagan.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from dagan.config import config_from_dict
from dagan.discriminator import build_discriminator
from dagan.generator import build_generator
from dagan.presets import get_preset


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """latest_net_G.pth / latest_net_D.pth of a SPADE (B1) model of the synthetic preset, as export-official writes."""
    root = tmp_path_factory.mktemp("synthetic-official")
    config = config_from_dict({"model": {"variant": "B1"}}).resolved()
    semantic_nc = get_preset("synthetic").semantic_nc
    torch.manual_seed(0)
    checkpoint = {"format_version": FORMAT_VERSION, "config": config.to_dict(), "semantic_nc": semantic_nc,
                  "generator": build_generator(config, semantic_nc).state_dict(),
                  "discriminator": build_discriminator(config, semantic_nc).state_dict(), "ema": None, "step": 0,
                  "epoch": 0}
    save_checkpoint(checkpoint, root / "trained.pt")
    assert dagan_main(["export-official", "--checkpoint", str(root / "trained.pt"), "--out", str(root)]) == 0
    return root


def _import(generator: Path, out: Path, *more: str) -> int:
    return dagan_main(["import-official", "--generator", str(generator), "--preset", "synthetic", "--out", str(out),
                       *more])


def test_a_model_exported_from_the_synthetic_preset_imports_with_that_preset(exported, tmp_path, capsys):
    out = tmp_path / "imported.pt"
    assert _import(exported / "latest_net_G.pth", out, "--discriminator", str(exported / "latest_net_D.pth")) == 0
    imported = load_checkpoint(out)
    assert imported["origin"]["preset"] == "synthetic" and imported["layout"]["class_names"][0] == "sky"
    original = load_checkpoint(exported / "trained.pt")["generator"]
    assert all(torch.equal(imported["generator"][key], original[key]) for key in original)


def test_non_finite_official_weights_are_refused_at_import(exported, tmp_path, capsys):
    names = {"generator": "latest_net_G.pth", "discriminator": "latest_net_D.pth"}
    for role, name in names.items():
        state = torch.load(exported / name, weights_only=True)
        key = next(iter(state))
        state[key] = state[key].clone()
        state[key].view(-1)[:4] = float("nan")
        damaged = tmp_path / name
        torch.save(state, damaged)
        files = {**{other: exported / file for other, file in names.items()}, role: damaged}
        out = tmp_path / f"{role}.pt"
        capsys.readouterr()
        assert _import(files["generator"], out, "--discriminator", str(files["discriminator"])) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "Traceback" not in error, error
        assert f"{role} checkpoint {damaged} holds 4 NaN/Inf values in 1 tensor(s) (first: {key})" in error, error
        assert not out.exists()


def test_a_layer_of_the_wrong_shape_is_named_not_taken_for_a_vae_generator(exported, tmp_path, capsys):
    state = torch.load(exported / "latest_net_G.pth", weights_only=True)
    state["fc.weight"] = torch.zeros(7, 3)  # 2-D like a VAE generator's linear fc, but of no model's shape
    damaged = tmp_path / "latest_net_G.pth"
    torch.save(state, damaged)
    assert _import(damaged, tmp_path / "x.pt") == 2
    error = capsys.readouterr().err
    assert "first mismatching key fc.weight: the file has shape [7, 3], the model expects [256, 11, 3, 3]" in error
    assert "pass --encoder" not in error and not (tmp_path / "x.pt").exists()


def test_generate_does_not_blame_a_training_for_damaged_imported_weights(exported, tmp_path, capsys):
    out = tmp_path / "imported.pt"
    assert _import(exported / "latest_net_G.pth", out) == 0
    checkpoint = load_checkpoint(out)
    next(iter(checkpoint["generator"].values())).view(-1)[:2] = float("inf")
    save_checkpoint(checkpoint, out)  # damaged after the import (a disk, a copy)
    labels = tmp_path / "labels"
    labels.mkdir()
    capsys.readouterr()
    assert dagan_main(["generate", "--model", str(out), "--labels", str(labels), "--out", str(tmp_path / "g")]) == 2
    error = capsys.readouterr().err
    assert "the generator has 2 NaN/Inf values" in error and "imported weights are damaged" in error
    assert "training" not in error
