"""An official checkpoint as a new user uses it (docs/OFFICIAL.md): import, judge, evaluate, register,
fine-tune. The official file is a rule-weight SPADE generator at ngf 8 (the official SPADE code
builds any ngf) on the CMP Facades layout, so the whole path runs in seconds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from data_fixtures import facades
from mlflow.tracking import MlflowClient
from train_fixtures import EXACT_FP32

from components.evaluate import main as evaluate
from components.import_official import main as import_official
from components.prepare import main as prepare
from components.register import main as register
from components.train import main as train
from components.train_judge import main as train_judge
from dagan.checkpoint import load_checkpoint
from dagan.generator import build_generator
from dagan.official.convert import official_config
from dagan.official.layout import key_map
from dagan.official.reference import rule_state_dict

NGF, SIZE = 8, 32


def official_generator_file(path: Path, preset: str = "facades", seed: int = 7) -> Path:
    """A state dict in the official SPADE layout, filled by the reference weight rule."""
    config = official_config(preset, "B1", NGF)
    with torch.device("meta"):
        generator = build_generator(config, 13 if preset == "facades" else 36)
    layout = [[pair.official, list(pair.shape)] for pair in key_map(generator, "generator")]
    torch.save(rule_state_dict(layout, seed), path)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow's default artifact root (./mlruns) lands there, not in the checkout
        # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which the components prefer to the config:
        # an earlier test's store must not leak in here
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        yield _prepared_and_imported(root)


def _prepared_and_imported(root: Path) -> tuple[Path, Path]:
    facades(root / "raw", np.random.default_rng(0))
    data = {
        "dataset": {"name": "facades", "raw_dir": str(root / "raw"), "prepared_dir": str(root / "prepared"),
                    "load_size": SIZE, "crop_size": SIZE, "num_workers": 0},
        "model": {"variant": "B1", "ngf": NGF, "ndf": 8},
        "loss": {"lambda_vgg": 0.0},
        "train": {**EXACT_FP32, "batch_size": 2, "epochs": 1, "epochs_decay": 0, "device": "cpu",
                  "out_dir": str(root / "official"),
                  "log_every": 1},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "official"},
        "judge": {"width": 8, "levels": 2, "epochs": 2, "batch_size": 2, "device": "cpu",
                  "out_dir": str(root / "judge")},
        "evaluate": {"batch_size": 2, "device": "cpu", "num_grid_samples": 2, "num_attention_samples": 1,
                     "download_weights": False, "fid": "off", "lpips": "off", "out_dir": str(root / "eval")},
        "register": {"out_dir": str(root / "register")},
    }
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    assert prepare(["--params", str(params)]) == 0
    assert train_judge(["--params", str(params)]) == 0
    official = official_generator_file(root / "latest_net_G.pth")
    assert import_official(["--params", str(params), "--generator", str(official)]) == 0
    return root, params


def test_an_imported_official_model_is_evaluated_and_registered_with_its_origin(project):
    root, params = project
    official = root / "latest_net_G.pth"
    checkpoint = load_checkpoint(root / "official" / "checkpoints" / "final.pt")
    assert checkpoint["origin"]["code"] == "SPADE" and checkpoint["config"]["model"]["ngf"] == NGF
    assert evaluate(["--params", str(params)]) == 0
    assert register(["--params", str(params)]) == 0

    registration = json.loads((root / "register" / "registration.json").read_text())
    assert registration["model_name"] == "dagan-facades" and "candidate" in registration["aliases"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version("dagan-facades", registration["version"])
    assert version.tags["origin.code"] == "SPADE" and version.tags["origin.kind"] == "official"
    assert version.tags["origin.generator_sha256"] == hashlib.sha256(official.read_bytes()).hexdigest()
    assert version.tags["gate_passed"] in ("True", "False")  # the same gate as a trained model
    run = client.get_run(json.loads((root / "official" / "mlflow_run.json").read_text())["run_id"])
    assert run.data.tags["origin.generator_file"] == "latest_net_G.pth"
    assert "eval/judge_miou_generated" in run.data.metrics
    # a second import into the same folder is refused: the imported model is never overwritten
    assert import_official(["--params", str(params), "--generator", str(official)]) == 2


def test_fine_tuning_starts_from_the_imported_weights(project):
    root, params = project
    imported = root / "official" / "checkpoints" / "final.pt"
    out = root / "finetune"
    assert train(["--params", str(params), "-S", f"train.init_from={imported}", "-S", f"train.out_dir={out}",
                  "-S", "train.max_steps=1", "-S", "train.lr_g=1e-20"]) == 0
    before = load_checkpoint(imported)["generator"]
    after = load_checkpoint(out / "checkpoints" / "final.pt")["generator"]
    weights = [key for key in before if key.endswith(("weight_orig", "weight", "bias"))]
    # an Adam step moves a weight by about lr: with lr 1e-20 the generator is still the imported one
    assert weights and all(torch.allclose(before[key], after[key], rtol=0, atol=1e-12) for key in weights)


def test_init_from_a_checkpoint_of_another_layout_names_the_key_and_both_shapes(project, tmp_path, capsys):
    root, params = project
    official = official_generator_file(tmp_path / "latest_net_G.pth", preset="cityscapes")
    imported = tmp_path / "cityscapes.pt"
    from dagan.__main__ import main as dagan_main

    assert dagan_main(["import-official", "--generator", str(official), "--preset", "cityscapes",
                       "--out", str(imported)]) == 0
    code = train(["--params", str(params), "-S", f"train.init_from={imported}", "-S",
                  f"train.out_dir={tmp_path / 'run'}", "-S", "train.max_steps=1"])
    error = capsys.readouterr().err
    assert code != 0 and "fc.weight" in error and "[128, 36, 3, 3]" in error and "[128, 13, 3, 3]" in error


def test_resuming_an_imported_model_as_a_training_run_is_refused_with_the_way_out(project, capsys):
    root, params = project
    assert train(["--params", str(params), "-S", "train.max_steps=1"]) != 0
    assert "train.init_from" in capsys.readouterr().err
