"""train_judge + evaluate on a tiny prepared dataset: metrics.json, figures, MLflow logging, FID unavailability."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
from eval_fixtures import (
    NUM_CLASSES,
    start_training_run,
    tiny_config,
    write_checkpoint,
    write_params,
    write_prepared,
)
from PIL import Image

from dagan.eval.judge import SegmentationNet
from dagan.eval.protocol import evaluate_generator
from dagan.labels import semantic_input


def test_train_judge_then_evaluate_writes_metrics_figures_and_logs_to_the_training_run(tmp_path, monkeypatch):
    from components.evaluate import main as evaluate
    from components.train_judge import main as train_judge

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch hub cache: no LPIPS weights
    config = tiny_config(tmp_path, evaluate={"fid_weights": str(tmp_path / "no-inception.pth")})
    write_prepared(tmp_path / "prepared")
    write_checkpoint(config, tmp_path / "train" / "checkpoints" / "final.pt")
    run_id = start_training_run(config)
    params = write_params(config, tmp_path)

    assert train_judge(["--params", str(params)]) == 0
    judge_metrics = json.loads((tmp_path / "judge" / "metrics.json").read_text())
    assert judge_metrics["judge_miou_real_val"] > 0.5  # flat-coloured rectangles: easy for the judge
    assert (tmp_path / "judge" / "judge.pt").is_file() and (tmp_path / "judge" / "config.yaml").is_file()

    assert evaluate(["--params", str(params)]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for source in ("generated", "real", "baseline"):
        assert 0 <= metrics[f"judge_miou_{source}"] <= 1 and 0 <= metrics[f"judge_accuracy_{source}"] <= 1
    assert metrics["judge_miou_real"] == pytest.approx(judge_metrics["judge_miou_real_val"], abs=1e-6)
    assert metrics["fd_judge_generated"] >= 0 and metrics["fd_judge_baseline"] >= 0
    assert "fid_generated" not in metrics
    assert str(tmp_path / "no-inception.pth") in metrics["unavailable"]["fid"]
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth") in metrics["unavailable"]["lpips"]
    per_class = json.loads((tmp_path / "eval" / "per_class_iou.json").read_text())
    assert set(per_class) == {"generated", "real", "baseline"} and len(per_class["real"]) == NUM_CLASSES
    samples = Image.open(tmp_path / "eval" / "figures" / "samples.png")
    # 3 rows of layout | generated | real, 32-pixel tiles enlarged 4x to 128, under a 22-pixel header of titles
    assert samples.size == (3 * 128 + 2 * 2, 22 + 3 * 128 + 2 * 2)
    assert Image.open(tmp_path / "eval" / "figures" / "attention.png").height == 22 + 2 * 128 + 2
    assert Image.open(tmp_path / "eval" / "figures" / "per_class_iou.png").mode == "RGB"
    table = (tmp_path / "eval" / "per_class_iou.csv").read_text().splitlines()
    assert table[0] == "class,generated,real,baseline" and len(table) == 1 + NUM_CLASSES
    assert table[1].startswith("class0,")

    client = mlflow.MlflowClient(config.mlflow.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.metrics["eval/judge_miou_generated"] == metrics["judge_miou_generated"]
    history = client.get_metric_history(run_id, "eval/judge_miou_generated")
    assert [point.step for point in history] == [0]  # the stand-in training wrote no metrics.json: step 0
    for name in ("fid", "lpips"):  # a short tag; the whole explanation is an artifact
        tag = run.data.tags[f"eval/{name}_unavailable"]
        assert len(tag) <= 120 and tag.endswith("(see eval/unavailable.txt)"), tag
    assert "not found" in run.data.tags["eval/lpips_unavailable"]
    assert run.data.tags["evaluated"] == "yes"
    assert run.data.tags["mlflow.note.content"].startswith(" | evaluated: judge mIoU generated ")
    explanation = client.download_artifacts(run_id, "eval/unavailable.txt", str(tmp_path / "download"))
    assert "vgg16-397923af.pth" in Path(explanation).read_text() and "no-inception.pth" in Path(explanation).read_text()
    artifacts = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"eval/metrics.json", "eval/per_class_iou.json", "eval/per_class_iou.csv", "eval/figures",
            "eval/per_class_iou_table.json"} <= artifacts
    logged = json.loads(Path(client.download_artifacts(run_id, "eval/per_class_iou_table.json",
                                                       str(tmp_path / "download"))).read_text())
    assert logged["columns"] == ["step", "class", "generated", "real", "baseline"]
    assert len(logged["data"]) == NUM_CLASSES
    assert "eval/per_class_iou_table.json" in run.data.tags["mlflow.loggedArtifacts"]  # the Evaluation view's table
    contexts = [{tag.key: tag.value for tag in item.tags}["mlflow.data.context"] for item in run.inputs.dataset_inputs]
    assert contexts == ["evaluation"]


class FlatGenerator(torch.nn.Module):
    """Stands in for DAGAN: paints the first three one-hot channels."""

    def forward(self, semantic):
        return torch.tanh(semantic[:, :3] * 2 - 1)


class TinyFeatures(torch.nn.Module):
    """Stands in for Inception: channel means and stds (6-d)."""

    def forward(self, image):
        return torch.cat([image.mean(dim=(2, 3)), image.std(dim=(2, 3))], dim=1)


def test_fid_and_lpips_code_path_with_injected_networks():
    torch.manual_seed(0)
    generator = FlatGenerator()
    judge = SegmentationNet(3, NUM_CLASSES, width=4, levels=2)
    labels = torch.randint(0, NUM_CLASSES, (8, 16, 16))
    batches = [{"label": labels[i:i + 4], "image": torch.rand(4, 3, 16, 16) * 2 - 1} for i in (0, 4)]
    calls = []

    def lpips(a, b):
        calls.append(a.shape)
        return (a - b).abs().mean(dim=(1, 2, 3))

    result = evaluate_generator(
        generator, judge, batches, num_classes=NUM_CLASSES, num_label_channels=NUM_CLASSES,
        class_names=[f"c{i}" for i in range(NUM_CLASSES)], mean_colors=torch.zeros(NUM_CLASSES + 1, 3),
        device=torch.device("cpu"), inception=TinyFeatures(), lpips=lpips, num_samples=5,
    )
    metrics = result.metrics
    assert metrics["fid_generated"] > 0 and metrics["fid_baseline"] > 0
    assert 0 < metrics["lpips_generated"] < 2 and metrics["lpips_baseline"] > 0
    assert len(calls) == 4  # generated and baseline, two batches
    assert result.samples["generated"].shape == (5, 3, 16, 16) and result.samples["label"].shape == (5, 16, 16)


def test_diversity_of_a_multimodal_generator_with_injected_networks():
    from dagan.generator import DAGANGenerator

    torch.manual_seed(0)
    judge = SegmentationNet(3, NUM_CLASSES, width=4, levels=2)
    labels = torch.randint(0, NUM_CLASSES, (4, 32, 32))
    batches = [{"label": labels[i:i + 2], "image": torch.rand(2, 3, 32, 32) * 2 - 1} for i in (0, 2)]
    pairs = []

    def lpips(a, b):
        pairs.append(a.shape[0])
        return (a - b).abs().mean(dim=(1, 2, 3))

    def run(generator, **options):
        return evaluate_generator(
            generator.eval(), judge, batches, num_classes=NUM_CLASSES, num_label_channels=NUM_CLASSES,
            class_names=[f"c{i}" for i in range(NUM_CLASSES)], mean_colors=torch.zeros(NUM_CLASSES + 1, 3),
            device=torch.device("cpu"), lpips=lpips, num_samples=3, num_style_samples=3, **options,
        )

    noise = DAGANGenerator(NUM_CLASSES, ngf=4, style="noise3d", z_dim=4)
    with torch.no_grad():  # a visible effect of z on the untrained network's images
        noise.fc.weight.mul_(100)
    result = run(noise)
    assert result.metrics["diversity_judge"] > 0 and result.metrics["diversity_lpips"] > 0
    assert pairs.count(2) == 2 * 2 + 2 * 3  # LPIPS of generated/baseline per batch + 3 pairs of 3 samples
    assert result.samples["multimodal"].shape == (3, 3, 3, 32, 32)
    assert result.metrics == run(noise).metrics  # the samples come from a fixed seed
    plain = run(FlatGenerator())
    assert "diversity_judge" not in plain.metrics and "multimodal" not in plain.samples
    with pytest.raises(ValueError, match="style_latent=real_photo needs a model trained with model.style=vae"):
        run(noise, style_latent="real_photo")


def test_real_photo_latent_scores_a_vae_model_as_the_official_test_script():
    from dagan.generator import DAGANGenerator

    torch.manual_seed(0)
    vae = DAGANGenerator(NUM_CLASSES, ngf=4, style="vae", z_dim=4, start_size=(1, 1)).eval()
    with torch.no_grad():
        vae.fc.weight.mul_(100)
        vae.encoder.fc_var.bias.fill_(2.0)  # a wide posterior: its samples differ visibly from z = 0
    judge = SegmentationNet(3, NUM_CLASSES, width=4, levels=2)
    batch = {"label": torch.randint(0, NUM_CLASSES, (2, 32, 32)), "image": torch.rand(2, 3, 32, 32) * 2 - 1}
    scored = {}
    for latent in ("mean", "real_photo"):
        scored[latent] = evaluate_generator(
            vae, judge, [batch], num_classes=NUM_CLASSES, num_label_channels=NUM_CLASSES,
            class_names=[f"c{i}" for i in range(NUM_CLASSES)], mean_colors=torch.zeros(NUM_CLASSES + 1, 3),
            device=torch.device("cpu"), num_samples=2, style_latent=latent,
        ).samples["generated"]
    assert torch.equal(scored["mean"], vae(semantic_input(batch["label"], NUM_CLASSES)))
    assert (scored["mean"] - scored["real_photo"]).abs().mean() > 1e-4


def test_evaluate_logs_the_diversity_of_a_vae_model_and_grids_k_samples(tmp_path, monkeypatch):
    from components.evaluate import main as evaluate
    from dagan.eval.judge import save_judge

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = tiny_config(tmp_path, model={"style": "vae", "z_dim": 8}, evaluate={"fid": "off", "num_style_samples": 3})
    write_prepared(tmp_path / "prepared", {"train": 4, "val": 4})
    write_checkpoint(config, tmp_path / "train" / "checkpoints" / "final.pt")
    save_judge(tmp_path / "judge" / "judge.pt", SegmentationNet(3, NUM_CLASSES, 8, 2), config, NUM_CLASSES)
    run_id = start_training_run(config)
    assert evaluate(["--params", str(write_params(config, tmp_path))]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["diversity_judge"] > 0 and "diversity_lpips" not in metrics and "lpips" in metrics["unavailable"]
    run = mlflow.MlflowClient(config.mlflow.tracking_uri).get_run(run_id)
    assert run.data.metrics["eval/diversity_judge"] == metrics["diversity_judge"]
    grid = Image.open(tmp_path / "eval" / "figures" / "samples.png")
    # 3 rows of layout | 3 samples | real: 32-pixel tiles enlarged to 128, 2-pixel gaps, a 22-pixel header
    assert grid.size == (5 * 128 + 4 * 2, 22 + 3 * 128 + 2 * 2)
