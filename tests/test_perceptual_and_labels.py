"""VGG19 feature injection (no silent random weights) and the semantic input."""

import pytest
import torch
from torchvision.models import vgg19

from dagan import perceptual
from dagan.labels import instance_edges, semantic_input
from dagan.perceptual import VGG19Features, build_vgg19, find_vgg19_weights
from dagan.pretrained import MissingPretrainedWeightsError


def test_vgg19_features_are_relu1_1_to_relu5_1_and_frozen():
    extractor = VGG19Features(vgg19(weights=None).features)
    features = extractor(torch.zeros(1, 3, 32, 32))
    assert [f.shape[1] for f in features] == [64, 128, 256, 512, 512]
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]
    assert all(not p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training


def test_weights_from_a_file_are_loaded(tmp_path):
    network = vgg19(weights=None)
    torch.save(network.state_dict(), tmp_path / "vgg19.pth")
    extractor = build_vgg19(str(tmp_path / "vgg19.pth"))
    assert torch.equal(extractor.slices[0][0].weight, network.features[0].weight)


def test_a_missing_file_names_the_path_and_the_config_keys(tmp_path):
    with pytest.raises(MissingPretrainedWeightsError) as err:
        find_vgg19_weights(str(tmp_path / "nope.pth"))
    assert "nope.pth" in str(err.value) and "loss.lambda_vgg=0" in str(err.value)


def test_auto_offline_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(url, dst, progress=True):  # the network is the one thing that cannot run here
        raise OSError("Network is unreachable")

    monkeypatch.setattr(perceptual.torch.hub, "download_url_to_file", offline)
    with pytest.raises(MissingPretrainedWeightsError) as err:
        find_vgg19_weights("auto")
    message = str(err.value)
    assert str(tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth") in message
    assert "loss.lambda_vgg=0" in message and "loss.vgg_weights" in message


def test_auto_uses_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cached = tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth"
    cached.parent.mkdir()
    cached.write_bytes(b"")
    assert find_vgg19_weights("auto") == cached


def test_instance_edges_mark_both_sides_of_a_boundary():
    instance = torch.tensor([[[1, 1, 2], [1, 1, 2], [3, 3, 3]]])
    expected = torch.tensor([[[0, 1, 1], [1, 1, 1], [1, 1, 1]]], dtype=torch.float32)
    assert torch.equal(instance_edges(instance)[:, 0], expected)


def test_semantic_input_one_hot_plus_edge_channel():
    label = torch.tensor([[[0, 2], [1, 2]]])
    instance = torch.tensor([[[5, 5], [5, 5]]])
    semantic = semantic_input(label, 3, instance)
    assert semantic.shape == (1, 4, 2, 2)
    assert torch.equal(semantic[0, :3].argmax(0), label[0])
    assert semantic[0, 3].sum() == 0
    assert semantic_input(label, 3).shape == (1, 3, 2, 2)


def test_out_of_range_labels_are_named():
    with pytest.raises(ValueError, match=r"span \[0, 7\].*\[0, 2\]"):
        semantic_input(torch.tensor([[[0, 7]]]), 3)
