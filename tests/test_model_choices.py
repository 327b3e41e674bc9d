"""Every generator x discriminator pair (model.generator, model.discriminator) trains, evaluates
and registers through the components (tiny settings, one prepared dataset and judge); the
registered CC-FPSE model generates through the MLflow pyfunc, as served."""

import io
import json

import mlflow
import numpy as np
import pandas as pd
from eval_fixtures import png, tiny_config, write_params, write_prepared
from PIL import Image

from dagan.checkpoint import load_checkpoint

SIZE = 64  # the FPSE discriminator needs sides of at least 64 (five stride-2 levels)
# dagan + multiscale, the default, goes through the same chain in test_evaluate / test_register / test_pipeline_local
PAIRS = [("dagan", "fpse"), ("ccfpse", "multiscale"), ("ccfpse", "fpse")]


def test_every_pair_trains_evaluates_and_registers_and_ccfpse_serves(tmp_path, monkeypatch):
    from components.evaluate import main as evaluate
    from components.register import main as register
    from components.train import main as train
    from components.train_judge import main as train_judge

    config = tiny_config(tmp_path, size=SIZE, train={"max_steps": 2, "checkpoint_every": 2, "log_every": 1,
                                                     "sample_every": 2},
                         judge={"epochs": 2}, evaluate={"fid": "off", "lpips": "off"})
    write_prepared(tmp_path / "prepared", splits={"train": 8, "val": 4}, size=SIZE)
    params = ["--params", str(write_params(config, tmp_path))]
    assert train_judge(params) == 0  # one judge for all pairs
    client = mlflow.MlflowClient(config.mlflow.tracking_uri)

    for version, pair in enumerate(PAIRS, start=1):
        generator, discriminator = pair
        out = tmp_path / f"train-{generator}-{discriminator}"
        arguments = [*params, "-S", f"model.generator={generator}", "-S", f"model.discriminator={discriminator}",
                     "-S", f"train.out_dir={out}"]
        assert train(arguments) == 0
        checkpoint = load_checkpoint(out / "checkpoints" / "final.pt")
        assert checkpoint["step"] == 2
        assert (checkpoint["config"]["model"]["generator"], checkpoint["config"]["model"]["discriminator"]) == pair
        assert evaluate(arguments) == 0
        metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
        assert 0 <= metrics["judge_miou_generated"] <= 1 and metrics["fd_judge_generated"] >= 0
        assert register(arguments) == 0
        registration = json.loads((tmp_path / "register" / "registration.json").read_text())
        assert registration["version"] == str(version) and "candidate" in registration["aliases"]
        run = client.get_run(json.loads((out / "mlflow_run.json").read_text())["run_id"])
        assert (run.data.tags["generator"], run.data.tags["discriminator"]) == pair
        assert run.data.params["model.generator"] == generator and "loss/g_feat" in run.data.metrics
        assert "eval/judge_miou_generated" in run.data.metrics

    mlflow.set_tracking_uri(config.mlflow.tracking_uri)  # the last one: CC-FPSE + FPSE, as a served model would
    model = mlflow.pyfunc.load_model(registration["model_uri"])
    label = np.zeros((SIZE, SIZE), np.uint8)
    label[8:40, 16:48] = 2
    output = model.predict(pd.DataFrame({"label": [png(label)], "instance": [png(label.astype(np.uint16))]}))
    image = np.asarray(Image.open(io.BytesIO(output["image"][0])))
    assert image.shape == (SIZE, SIZE, 3)
