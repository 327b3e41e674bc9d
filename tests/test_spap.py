"""SPAP (dagan/nn/spap.py): the cascade on hand-made weights, its placement in G and D, the config."""

import pytest
import torch
from torch import nn

from dagan.config import ConfigError, config_from_dict
from dagan.discriminator import build_discriminator
from dagan.generator import build_generator
from dagan.nn.spap import SPAP_RATES, SpatialPyramidAttentivePooling, spap_parameter_count

SEMANTIC_NC = 11  # synthetic preset: 10 classes + instance edge


def _center_only(conv: nn.Conv2d, weight: float, bias: float = 0.0) -> None:
    """A 3x3 (any dilation) conv of one channel that only scales its input: out = weight * x + bias."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = weight
        conv.bias.fill_(bias)


def test_cascade_gates_each_new_level_against_the_mixture_so_far():
    unit = SpatialPyramidAttentivePooling(1, "coarse_to_fine", rates=(1, 2))
    assert unit.rates == (2, 1) and [conv.dilation for conv in unit.levels] == [(2, 2), (1, 1)]
    _center_only(unit.levels[0], 2.0)  # coarse level: 2x
    _center_only(unit.levels[1], -1.0)  # fine level: lrelu(-x)
    with torch.no_grad():
        unit.gates[0].weight.copy_(torch.tensor([0.5, 1.0]).view(1, 2, 1, 1))  # 0.5 * mixed + 1.0 * level
        unit.gates[0].bias.fill_(0.25)
    x = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])
    coarse = torch.nn.functional.leaky_relu(2 * x, 0.2)
    fine = torch.nn.functional.leaky_relu(-x, 0.2)
    gate = torch.sigmoid(0.5 * coarse + fine + 0.25)
    out, gates = unit(x)
    assert torch.allclose(out, x + gate * fine + (1 - gate) * coarse)  # residual around the cascade
    assert torch.allclose(gates, gate)  # one channel: the channel mean is the gate itself


def test_orders_visit_the_pyramid_in_opposite_directions():
    coarse_first = SpatialPyramidAttentivePooling(4, "coarse_to_fine")
    fine_first = SpatialPyramidAttentivePooling(4, "fine_to_coarse")
    assert coarse_first.rates == tuple(sorted(SPAP_RATES, reverse=True)) == fine_first.rates[::-1]
    out, gates = fine_first(torch.randn(2, 4, 9, 7))
    assert out.shape == (2, 4, 9, 7) and gates.shape == (2, len(SPAP_RATES) - 1, 9, 7)
    assert gates.min() >= 0 and gates.max() <= 1
    with pytest.raises(ValueError, match="order"):
        SpatialPyramidAttentivePooling(4, "sideways")
    with pytest.raises(ValueError, match="two distinct"):
        SpatialPyramidAttentivePooling(4, rates=(2, 2))


@pytest.mark.parametrize("channels", [1, 8, 64])
def test_parameter_count_formula(channels):
    unit = SpatialPyramidAttentivePooling(channels)
    assert sum(p.numel() for p in unit.parameters()) == spap_parameter_count(channels)


def _config(**model):
    return config_from_dict({"model": {"ngf": 8, "ndf": 8, **model}}, "test").resolved()


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_generator_spap_refines_the_last_feature_and_is_trained():
    torch.manual_seed(0)
    plain = build_generator(_config(), SEMANTIC_NC)
    torch.manual_seed(0)
    with_spap = build_generator(_config(spap="generator", spap_order="fine_to_coarse"), SEMANTIC_NC)
    assert _count(with_spap) - _count(plain) == spap_parameter_count(8)
    assert with_spap.spap.order == "fine_to_coarse" and plain.spap is None
    semantic = torch.zeros(2, SEMANTIC_NC, 64, 64)
    semantic[:, 1] = 1
    image, attention = with_spap(semantic, return_attention=True)
    assert image.shape == (2, 3, 64, 64) and attention["spap"].shape == (2, len(SPAP_RATES) - 1, 64, 64)
    assert {"sam", "cam"} <= set(attention)  # B6 keeps its modules, on the refined feature
    image.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in with_spap.spap.parameters())


def test_discriminator_spap_keeps_the_feature_list_and_is_spectral_normalised():
    plain = build_discriminator(_config(), SEMANTIC_NC)
    with_spap = build_discriminator(_config(spap="discriminator"), SEMANTIC_NC)
    assert _count(with_spap) - _count(plain) == 2 * spap_parameter_count(8)  # one unit per scale
    assert all(hasattr(conv, "weight_orig") for scale in with_spap.scales for conv in scale.spap.levels)
    semantic, image = torch.randn(2, SEMANTIC_NC, 32, 32), torch.randn(2, 3, 32, 32)
    outputs, attention = with_spap(semantic, image, return_attention=True)
    assert [len(group) for group in outputs.features] == [len(group) for group in plain(semantic, image).features]
    assert len(outputs.logits) == len(plain(semantic, image).logits)
    assert attention["spap_d"].shape == (2, len(SPAP_RATES) - 1, *outputs.features[0][0].shape[2:])
    assert plain(semantic, image, return_attention=True)[1] == {}


def test_spap_off_is_the_default_and_builds_no_unit():
    config = _config()
    assert config.model.spap == "off"
    generator, discriminator = build_generator(config, SEMANTIC_NC), build_discriminator(config, SEMANTIC_NC)
    assert not any("spap" in name for name in [*generator.state_dict(), *discriminator.state_dict()])


def test_discriminator_spap_leaves_the_generator_identical():
    torch.manual_seed(3)
    plain = build_generator(_config(), SEMANTIC_NC).state_dict()
    torch.manual_seed(3)
    other = build_generator(_config(spap="discriminator"), SEMANTIC_NC).state_dict()
    assert plain.keys() == other.keys() and all(torch.equal(plain[k], other[k]) for k in plain)


def test_config_checks_the_spap_keys():
    with pytest.raises(ConfigError, match="model.spap: 'everywhere' is not one of: off, generator"):
        _config(spap="everywhere")
    with pytest.raises(ConfigError, match="use model.spap=discriminator"):
        config_from_dict({"model": {"generator": "ca2sis", "spap": "both"}}, "test").resolved()
    with pytest.raises(ConfigError, match="model.generator=ccfpse; use model.spap=discriminator"):
        config_from_dict({"model": {"generator": "ccfpse", "spap": "generator"}}, "test").resolved()
    with pytest.raises(ConfigError, match="model.discriminator=fpse; use model.spap=generator"):
        config_from_dict({"model": {"discriminator": "fpse", "spap": "discriminator"}}, "test").resolved()
    assert _config(spap="both").model.spap_in("generator") and _config(spap="both").model.spap_in("discriminator")


def test_describe_counts_spap_on_the_cityscapes_preset():
    """docs/ATTENTION.md's numbers: one unit in G (ngf 64), one per discriminator scale (ndf 64): 42 C^2 + 7 C each."""
    from dagan.__main__ import describe

    info = describe("cityscapes", settings=["model.spap=both"])
    assert spap_parameter_count(64) == 172_480
    assert (info["generator_params"], info["discriminator_params"]) == (93_134_229 + 172_480, 5_601_410 + 2 * 172_480)
    assert (info["generator_params"], info["discriminator_params"], info["spap_params"]) == (
        93_306_709, 5_946_370, 3 * 172_480)
