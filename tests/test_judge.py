"""The segmentation judge: trains and improves on a tiny fixture; pretrained TorchScript judges map label ids."""

import json

import pytest
import torch

from dagan.config import ConfigError, config_from_dict
from dagan.eval.judge import (
    PretrainedJudge,
    SegmentationNet,
    build_judge,
    evaluated_target,
    load_judge,
    save_judge,
    train_epoch,
)
from dagan.eval.metrics import confusion_matrix, mean_iou

COLORS = torch.tensor([[-0.8, -0.8, 0.6], [0.7, -0.5, -0.5], [-0.2, 0.8, -0.2]])


def scenes(count: int, seed: int, size: int = 16) -> list[dict[str, torch.Tensor]]:
    """Batches of 4 scenes: random rectangles of 3 classes, each class a noisy flat colour."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(count, size, size, dtype=torch.long)
    for index in range(count):
        for class_id in (1, 2):
            top, left = torch.randint(0, size - 6, (2,), generator=generator).tolist()
            labels[index, top:top + 6, left:left + 7] = class_id
    images = COLORS[labels].permute(0, 3, 1, 2) + 0.3 * torch.randn(count, 3, size, size, generator=generator)
    return [{"image": images[i:i + 4], "label": labels[i:i + 4]} for i in range(0, count, 4)]


def judge_miou(judge, batches) -> float:
    judge.eval()
    with torch.no_grad():
        matrix = sum(confusion_matrix(judge.predict(b["image"]), b["label"], 3) for b in batches)
    return mean_iou(matrix)


def test_judge_trains_and_improves_on_a_tiny_fixture(tmp_path):
    config = config_from_dict({"judge": {"width": 8, "levels": 2, "seed": 1}}).resolved()
    judge = build_judge(config, num_classes=3)
    assert isinstance(judge, SegmentationNet)
    train, val = scenes(16, seed=0), scenes(8, seed=1)
    before = judge_miou(judge, val)
    optimizer = torch.optim.Adam(judge.parameters(), lr=1e-2)
    losses = [train_epoch(judge, optimizer, train, ignore_index=3, device=torch.device("cpu")) for _ in range(15)]
    after = judge_miou(judge, val)
    assert losses[-1] < 0.5 * losses[0]
    assert after > 0.8 and after > before + 0.3, (before, after)
    assert judge.features(val[0]["image"]).shape == (4, 16)

    save_judge(tmp_path / "judge.pt", judge, config, num_classes=3)
    loaded = load_judge(tmp_path / "judge.pt", config)
    assert judge_miou(loaded, val) == pytest.approx(after)


def test_missing_judge_checkpoint_names_the_stage(tmp_path):
    config = config_from_dict({}).resolved()
    with pytest.raises(FileNotFoundError, match="train_judge"):
        load_judge(tmp_path / "judge.pt", config)


class ThreeClassSegmenter(torch.nn.Module):
    """Stands in for an exported DRN: class = argmax of the input's channels."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * 10


def test_pretrained_torchscript_judge_maps_its_classes_to_dataset_ids(tmp_path):
    torch.jit.script(ThreeClassSegmenter()).save(str(tmp_path / "segmenter.pt"))
    (tmp_path / "mapping.json").write_text(json.dumps({"0": 5, "1": 7}))  # segmenter class 2 maps to nothing
    config = config_from_dict({"judge": {"pretrained": str(tmp_path / "segmenter.pt"),
                                         "pretrained_label_map": str(tmp_path / "mapping.json"),
                                         "pretrained_input": "symmetric"}}).resolved()
    judge = build_judge(config, num_classes=9)
    assert isinstance(judge, PretrainedJudge)
    image = torch.zeros(1, 3, 1, 3)
    image[0, :, 0, 0] = torch.tensor([1.0, 0, 0])
    image[0, :, 0, 1] = torch.tensor([0, 1.0, 0])
    image[0, :, 0, 2] = torch.tensor([0, 0, 1.0])
    assert judge.predict(image).tolist() == [[[5, 7, -1]]]
    assert judge.features(image).shape == (1, 3)
    # only mapped dataset classes are scored; the others become ignored (-1)
    assert evaluated_target(judge, torch.tensor([[5, 6, 7]])).tolist() == [[5, -1, 7]]

    save_judge(tmp_path / "judge.pt", judge, config, num_classes=9)
    assert isinstance(load_judge(tmp_path / "judge.pt", config), PretrainedJudge)

    # the same segmenter as a torch.export program (.pt2)
    torch.export.save(torch.export.export(ThreeClassSegmenter(), (image,)), str(tmp_path / "segmenter.pt2"))
    exported = build_judge(config_from_dict({"judge": {**config.judge.__dict__,
                                                       "pretrained": str(tmp_path / "segmenter.pt2")}}), 9)
    assert exported.predict(image).tolist() == [[[5, 7, -1]]]


def test_a_pretrained_judge_checkpoint_loaded_without_judge_pretrained_names_the_key(tmp_path):
    torch.jit.script(ThreeClassSegmenter()).save(str(tmp_path / "segmenter.pt"))
    (tmp_path / "mapping.json").write_text(json.dumps({"0": 5, "1": 7}))
    config = config_from_dict({"judge": {"pretrained": str(tmp_path / "segmenter.pt"),
                                         "pretrained_label_map": str(tmp_path / "mapping.json")}}).resolved()
    save_judge(tmp_path / "judge.pt", build_judge(config, num_classes=9), config, num_classes=9)
    with pytest.raises(ConfigError, match="judge.pretrained is null"):  # was a TypeError from Path(None)
        load_judge(tmp_path / "judge.pt", config_from_dict({}).resolved())


def test_pretrained_judge_errors_name_the_key_and_file(tmp_path):
    config = config_from_dict({"judge": {"pretrained": str(tmp_path / "drn.pt")}}).resolved()
    with pytest.raises(FileNotFoundError, match="judge.pretrained=.*drn.pt"):
        build_judge(config, 3)
    torch.jit.script(ThreeClassSegmenter()).save(str(tmp_path / "drn.pt"))
    with pytest.raises(ConfigError, match="pretrained_label_map"):
        build_judge(config, 3)
    (tmp_path / "map.json").write_text("[1, 2]")
    config = config_from_dict({"judge": {"pretrained": str(tmp_path / "drn.pt"),
                                         "pretrained_label_map": str(tmp_path / "map.json")}}).resolved()
    with pytest.raises(ConfigError, match="map.json"):
        build_judge(config, 3)
