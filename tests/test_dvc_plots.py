"""The DVC plots of dvc.yaml, rendered by the real `dvc plots show` from files written by the components'
own writers (the loss table, the per-class IoU table, PNG figures) at the paths dvc.yaml names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from components.evaluate import write_per_class_table
from components.outputs import (
    FIGURES_DIR,
    LATEST_SAMPLES,
    LOSS_COLUMNS,
    LOSSES_FILE,
    PER_CLASS_IOU_TABLE,
    SAMPLES_DIR,
    LossTable,
    write_png,
)

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))


def test_loss_table_rows_and_a_resumed_run_dropping_rows_past_its_checkpoint(tmp_path):
    path = tmp_path / LOSSES_FILE
    table = LossTable(path)
    for step in (10, 20, 30):
        table.append(step, {"g_gan": 1.0, "g_feat": 0.5, "g_total": 6.0, "d_real": 0.9, "d_fake": 0.8})
    resumed = LossTable(path)  # the run resumed from its checkpoint at step 20: step 30 is logged again
    resumed.append(30, {"g_gan": 2.0, "g_feat": 0.5, "g_total": 7.0, "d_real": 0.9, "d_fake": 0.8})
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["step", *LOSS_COLUMNS]
    assert [line.split("\t")[0] for line in lines[1:]] == ["10", "20", "30"]
    assert lines[-1].split("\t") == ["30", "7", "2", "0.5", "", "", "", "0.9", "0.8"]  # g_vgg, g_att, g_kld off
    resumed.append(40, {"g_gan": 2.0, "g_feat": 0.5, "g_kld": 0.25, "g_att": 0.125, "g_total": 7.0, "d_real": 0.9,
                        "d_fake": 0.8})  # CA2SIS's attention loss and the KL term of a vae have their columns
    row = dict(zip(["step", *LOSS_COLUMNS], path.read_text().splitlines()[-1].split("\t"), strict=True))
    assert (row["g_att"], row["g_kld"], row["g_vgg"]) == ("0.125", "0.25", "")


def test_dvc_plots_show_renders_every_plot_of_dvc_yaml(tmp_path):
    """Copy dvc.yaml + params.yaml into a fresh DVC repo, write the files, render with the real dvc."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    train_dir, eval_dir = tmp_path / params["train"]["out_dir"], tmp_path / params["evaluate"]["out_dir"]
    prepared = tmp_path / params["dataset"]["prepared_dir"]
    losses = LossTable(train_dir / LOSSES_FILE)
    for step in (10, 20):
        losses.append(step, {"g_gan": 1.0 / step, "g_feat": 0.5, "g_total": 6.0, "d_real": 0.9, "d_fake": 0.8})
    image = np.zeros((8, 8, 3), np.uint8)
    write_png(train_dir / SAMPLES_DIR / LATEST_SAMPLES, image)
    for name in ("samples.png", "attention.png", "per_class_iou.png"):
        write_png(eval_dir / FIGURES_DIR / name, image)
    write_per_class_table(eval_dir / PER_CLASS_IOU_TABLE, [{"class": "sky", "generated": 0.5, "real": 0.9,
                                                             "baseline": 0.7},
                                                            {"class": "car", "generated": None, "real": 0.4,
                                                             "baseline": 0.1}])
    (prepared / "class_frequency").mkdir(parents=True)
    (prepared / "class_frequency" / "train.csv").write_text("class,id,frequency\nsky,0,0.6\ncar,1,0.4\n")
    for command in (["git", "init", "-q"], [DVC, "init", "-q"]):
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)

    result = subprocess.run([DVC, "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    plots = json.loads(result.stdout)
    assert not plots.get("errors"), plots.get("errors")
    rendered = plots["data"]
    curves = rendered["training losses"][0]["content"]["data"]["values"]
    assert {row["field"] for row in curves} == set(LOSS_COLUMNS)
    assert {row["step"] for row in curves} == {"10", "20"}
    bars = rendered["judge IoU per class (generated)"][0]["content"]
    assert [row["class"] for row in bars["data"]["values"]] == ["sky", "car"]
    assert bars["encoding"]["x"]["field"] == "generated" and bars["encoding"]["y"]["field"] == "class"
    images = {name for name, items in rendered.items() if items[0]["type"] == "image"}
    train_out, eval_out = params["train"]["out_dir"], params["evaluate"]["out_dir"]
    assert images == {f"{train_out}/{SAMPLES_DIR}/{LATEST_SAMPLES}",
                      *(f"{eval_out}/{FIGURES_DIR}/{name}" for name in ("samples.png", "attention.png",
                                                                          "per_class_iou.png"))}
