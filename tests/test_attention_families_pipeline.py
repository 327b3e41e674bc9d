"""A short run of each attention family through the real components: train -> train_judge -> evaluate -> register,
then the registered model answers a request."""

import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from eval_fixtures import NUM_CLASSES, png, tiny_config, write_params, write_prepared
from PIL import Image

from dagan.nn.spap import SPAP_RATES

CA2SIS = {"generator": "ca2sis", "ca2sis_style_dim": 8, "ca2sis_mapping_network": False}


@pytest.mark.parametrize(("model", "size", "extra_columns"), [
    (CA2SIS, 64, 2),  # cross-attention: attended class, its weight
    ({"spap": "both", "spap_order": "fine_to_coarse"}, 32, 2 + 2 * (len(SPAP_RATES) - 1)),  # SAM, CAM, SPAP G and D
], ids=["ca2sis", "spap-both"])
def test_short_run_trains_evaluates_and_registers(tmp_path, monkeypatch, model, size, extra_columns):
    from components.evaluate import main as evaluate
    from components.register import main as register
    from components.train import main as train
    from components.train_judge import main as train_judge

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no FID/LPIPS weights: recorded as unavailable
    config = tiny_config(tmp_path, model=model, dataset={"crop_size": size, "load_size": size},
                         train={"batch_size": 2, "max_steps": 2, "log_every": 1, "sample_every": 0},
                         judge={"epochs": 2}, evaluate={"batch_size": 2, "num_attention_samples": 2})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", config.mlflow.tracking_uri)  # this test's store, for every step
    write_prepared(tmp_path / "prepared", {"train": 4, "val": 4}, size=size)
    params = ["--params", str(write_params(config, tmp_path))]

    assert train(params) == 0
    train_metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert train_metrics["steps"] == 2
    assert ("g_att" in train_metrics) == (model is CA2SIS)
    run_id = json.loads((tmp_path / "train" / "mlflow_run.json").read_text())["run_id"]
    run = mlflow.MlflowClient(config.mlflow.tracking_uri).get_run(run_id)
    assert (run.data.tags["generator"], run.data.tags["spap"]) == (config.model.generator, config.model.spap)

    assert train_judge(params) == 0
    assert evaluate(params) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["judge_miou_generated"] <= 1 and metrics["fd_judge_generated"] >= 0
    figure = Image.open(tmp_path / "eval" / "figures" / "attention.png")
    assert figure.height >= 2 * size and figure.width >= (2 + extra_columns) * size  # label, generated, the maps

    assert register(params) == 0
    record = json.loads((tmp_path / "register" / "registration.json").read_text())
    assert record["model_name"] == "dagan-synthetic" and record["version"] == "1"
    served = mlflow.pyfunc.load_model(record["model_uri"])
    label = np.zeros((size, size), np.uint8)
    label[: size // 2] = NUM_CLASSES - 1
    answer = served.predict(pd.DataFrame({"label": [png(label)]}), params={"edges_from_labels": True})
    assert Image.open(io.BytesIO(answer["image"][0])).size == (size, size)
