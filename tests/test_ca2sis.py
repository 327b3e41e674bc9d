"""CA2SIS (dagan/ca2sis.py): official parameter counts, layout, style codes, attention loss, training step."""

import math

import pytest
import torch

from dagan.__main__ import describe
from dagan.ca2sis import STYLE_MEAN_MOMENTUM, CA2SISGenerator
from dagan.config import ConfigError, config_from_dict
from dagan.generator import build_generator
from dagan.losses import attention_alignment_loss
from dagan.nn.transformer import MultiHeadAttention, SpatialCrossAttention

# The official code (TFonta/CA2SIS, define_G: ngf 32, style_dim 256, mapping_dim 16) instantiated on CPU:
# generator parameters, and the mapping network's share of them.
OFFICIAL_CELEBAMASK_HQ = 77_229_243  # train_celeba.sh: 19 labels, --exclude_bg, 256x256
OFFICIAL_CELEBAMASK_HQ_WITH_BACKGROUND = 77_229_755  # the same without --exclude_bg
OFFICIAL_ADE20K = 393_519_707  # 150 labels + don't care, 256x256, argparse defaults
OFFICIAL_MAPPING_CELEBAMASK_HQ = 28_244_224
OFFICIAL_MAPPING_ADE20K = 218_932_480  # the ADE20K setting above (docs/ATTENTION.md, "Parameter counts")
OFFICIAL_D_CELEBAMASK_HQ = 1_364_098  # its multiscale D: n_layers_D 3, ndf 64, 2 scales
OFFICIAL = ["dataset.crop_size=256", "model.ngf=32", "model.generator=ca2sis"]


def test_parameter_counts_equal_the_official_code():
    celeba = describe("celebamask_hq", settings=[*OFFICIAL, "model.ca2sis_exclude_background=true",
                                                 "model.n_layers_d=3"])
    assert celeba["generator_params"] == OFFICIAL_CELEBAMASK_HQ
    assert celeba["generator_parts"]["mapping_network"] == OFFICIAL_MAPPING_CELEBAMASK_HQ
    assert celeba["discriminator_params"] == OFFICIAL_D_CELEBAMASK_HQ
    assert describe("celebamask_hq", settings=OFFICIAL)["generator_params"] == OFFICIAL_CELEBAMASK_HQ_WITH_BACKGROUND
    ade20k = describe("ade20k", settings=OFFICIAL)
    assert ade20k["generator_params"] == OFFICIAL_ADE20K
    assert ade20k["generator_parts"]["mapping_network"] == OFFICIAL_MAPPING_ADE20K
    without_mapping = describe("celebamask_hq", settings=[*OFFICIAL, "model.ca2sis_exclude_background=true",
                                                          "model.ca2sis_mapping_network=false"])
    assert without_mapping["generator_params"] == OFFICIAL_CELEBAMASK_HQ - OFFICIAL_MAPPING_CELEBAMASK_HQ


def tiny(num_classes=4, semantic_nc=5, **kwargs):
    torch.manual_seed(0)
    options = {"ngf": 8, "style_dim": 8, "mapping_network": False, **kwargs}
    return CA2SISGenerator(num_classes, semantic_nc, (64, 64), **options)


def scene(batch=2, num_classes=4, instance=True):
    label = torch.zeros(batch, 64, 64, dtype=torch.long)
    label[:, 16:48, :32] = 1
    label[:, 40:, 40:] = 2  # class 3 is absent
    classes = torch.nn.functional.one_hot(label, num_classes).permute(0, 3, 1, 2).float()
    edges = torch.zeros(batch, 1, 64, 64)
    semantic = torch.cat([classes, edges], 1) if instance else classes
    return semantic, torch.rand(batch, 3, 64, 64) * 2 - 1


def test_layout_and_gradients():
    generator = tiny().train()
    semantic, photo = scene()
    image, attention = generator(semantic, return_attention=True, style_image=photo)
    assert image.shape == (2, 3, 64, 64) and image.abs().max() <= 1
    assert [tuple(layer.shape) for layer in attention["ca2sis"]] == [(2, 4, s, s) for s in (4, 8, 16, 32, 64)]
    assert generator.embed.in_channels == 5  # classes + instance edge: the structure path sees both
    assert [a.block.self_attention is not None for a in generator.attention] == [True, True, True, False, False]
    (image.sum() + attention_alignment_loss(attention["ca2sis"], semantic)).backward()
    assert all(p.grad is not None for p in generator.parameters() if p.requires_grad)
    assert generator.style_encoder.stem[0].weight.grad.abs().sum() > 0  # styles reach the image


def test_attention_layers_start_as_the_identity_and_blocks_zero_their_second_conv():
    layer = SpatialCrossAttention(16, 12, heads=2, head_dim=8, self_attention=True)
    x = torch.randn(2, 16, 4, 4)
    out, logits = layer(x, torch.randn(2, 3, 12))
    assert torch.equal(out, x) and logits.shape == (2, 3, 4, 4)
    assert all(block.conv_out.weight.abs().sum() == 0 for block in tiny().blocks)


def test_written_out_attention_equals_the_fused_kernel():
    attention = MultiHeadAttention(16, 16, heads=4, head_dim=8)
    x = torch.randn(2, 10, 16)
    fused, no_logits = attention(x)
    explicit, logits = attention(x, return_logits=True)
    assert no_logits is None and logits.shape == (2, 10, 10)
    assert torch.allclose(fused, explicit, atol=1e-6)


def test_exclude_background_drops_class_zero_from_the_structure_path():
    generator = tiny(semantic_nc=4, exclude_background=True)
    assert generator.embed.in_channels == 3 and generator.style_encoder.num_classes == 4


def test_absent_classes_get_the_empty_code_and_styles_depend_on_the_photo():
    generator = tiny().eval()
    semantic, photo = scene()
    codes = generator.encode_style(photo, semantic[:, :4])
    assert codes.shape == (2, 4, 5 * 8)
    assert torch.allclose(codes[:, 3], generator.style_encoder.empty_codes()[3].expand(2, -1))
    assert not torch.allclose(codes, generator.encode_style(-photo, semantic[:, :4]))


def test_class_mean_styles_track_training_like_running_statistics():
    generator = tiny().train()
    semantic, photo = scene()
    with pytest.raises(ValueError, match="needs the scene's photo"):
        generator(semantic)
    generator(semantic, style_image=photo)
    first = generator.encode_style(photo, semantic[:, :4]).detach()
    assert generator.style_seen.tolist() == [True, True, True, False]
    assert torch.allclose(generator.style_mean[:3], first.mean(0)[:3], atol=1e-6)  # first sight: copied
    generator(semantic, style_image=-photo)
    second = generator.encode_style(-photo, semantic[:, :4]).detach().mean(0)
    expected = first.mean(0) + STYLE_MEAN_MOMENTUM * (second - first.mean(0))
    assert torch.allclose(generator.style_mean[:3], expected[:3], atol=1e-5)
    generator.eval()
    image = generator(semantic)  # eval without a photo: the class means
    assert image.shape == (2, 3, 64, 64)
    styles = generator.class_mean_styles(semantic[:, :4])
    assert torch.allclose(styles[:, 3], generator.style_encoder.empty_codes()[3].expand(2, -1))
    unseen = semantic.clone()
    unseen[:, 3, :4, :4], unseen[:, 0, :4, :4] = 1, 0  # class 3 never appeared in training: no mean
    assert torch.equal(generator.class_mean_styles(unseen[:, :4]), styles)


def test_attention_loss_is_the_class_mask_cross_entropy():
    semantic, _ = scene(batch=1)
    classes = semantic[:, :4]
    assert attention_alignment_loss([torch.zeros(1, 4, 8, 8)], semantic).item() == pytest.approx(math.log(2))
    confident = [(classes * 2 - 1) * 50 for _ in range(3)]
    assert attention_alignment_loss(confident, semantic).item() < 1e-6


def test_size_rules():
    with pytest.raises(ValueError, match="multiples of 64"):
        CA2SISGenerator(4, 5, (96, 64))
    assert tiny().size_error(64, 64) is None and "64x64 images only" in tiny().size_error(128, 64)
    with pytest.raises(ConfigError, match="multiples of 64, got 32x32"):
        config_from_dict({"model": {"generator": "ca2sis"}, "dataset": {"crop_size": 32}}, "test").resolved()


def test_build_generator_takes_the_label_channels_from_the_preset_or_the_caller():
    config = config_from_dict({"model": {"generator": "ca2sis", "ngf": 8, "ca2sis_style_dim": 8,
                                         "ca2sis_mapping_network": False}}, "test").resolved()
    assert build_generator(config, 11).num_label_channels == 10  # synthetic preset: 10 classes + instance edge
    assert build_generator(config, 5, num_label_channels=4).num_label_channels == 4
    with pytest.raises(ValueError, match="does not fit preset 'synthetic'"):
        build_generator(config, 5)


def test_the_mapping_network_is_built_frozen():
    generator = tiny(mapping_network=True)
    assert not any(p.requires_grad for p in generator.mapping_network.parameters())
    assert generator.mapping_network(torch.randn(3, 16)).shape == (3, 4, 5 * 8)


@pytest.mark.parametrize("style_from", ["photo", "class_mean"])
def test_the_judge_probe_scores_ca2sis_with_photos_or_class_means(style_from):
    from dagan.eval.judge import SegmentationNet
    from dagan.eval.judge_probe import JudgeProbe

    generator = tiny()
    semantic, photo = scene()
    generator(semantic, style_image=photo)  # training: tracks the class means
    label = semantic[:, :4].argmax(dim=1)
    batches = [{"label": label, "instance": label, "image": photo}]
    probe = JudgeProbe(SegmentationNet(3, 4, width=4, levels=2), batches, num_classes=4, num_label_channels=4,
                       device=torch.device("cpu"), style_from=style_from)
    scores = probe(generator)
    assert generator.training and 0 <= scores["judge_miou"] <= 1 and scores["fd_judge"] >= 0
