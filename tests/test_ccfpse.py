"""The CC-FPSE generator: conditional convolutions, the label pyramid, both starts, any ngf and upsampling."""

import pytest
import torch
import torch.nn.functional as F

from dagan.ccfpse_generator import CCFPSEGenerator
from dagan.config import NUM_UP, config_from_dict
from dagan.generator import build_generator
from dagan.nn.condconv import CondConvBlock, spatial_depthwise_conv3x3
from dagan.nn.label_pyramid import LabelPyramid

SEMANTIC_NC = 5


def label_input(batch, height, width):
    blocks = torch.randint(0, SEMANTIC_NC, (batch, 2, 2))  # blocks: the smallest resized maps differ per sample
    label = blocks.repeat_interleave(height // 2, 1).repeat_interleave(width // 2, 2)
    return F.one_hot(label, SEMANTIC_NC).permute(0, 3, 1, 2).float()


def test_spatial_depthwise_conv_is_a_per_pixel_unfolded_product():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    kernels = torch.randn(2, 27, 5, 6, dtype=torch.float64)
    expected = (F.unfold(x, 3, padding=1).view(2, 3, 9, 5, 6) * kernels.view(2, 3, 9, 5, 6)).sum(2)
    assert torch.allclose(spatial_depthwise_conv3x3(x, kernels), expected, rtol=1e-12, atol=1e-12)


def test_spatial_depthwise_conv_with_the_same_kernel_everywhere_is_a_depthwise_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    weight = torch.randn(3, 1, 3, 3, dtype=torch.float64)
    kernels = weight.reshape(1, 27, 1, 1).expand(2, 27, 5, 6)
    expected = F.conv2d(x, weight, padding=1, groups=3)
    assert torch.allclose(spatial_depthwise_conv3x3(x, kernels), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="do not fit"):
        spatial_depthwise_conv3x3(x, kernels[:, :26])


def test_block_widths_and_the_frozen_unused_norms():
    block = CondConvBlock(32, 16, label_nc=7)
    assert block.kernels_0[-1].out_channels == 9 * 32 and block.kernels_1[-1].out_channels == 9 * 16
    assert block.gate_0[-2].out_channels == 16 and isinstance(block.gate_1[-1], torch.nn.Sigmoid)
    assert (block.pointwise_0.in_channels, block.pointwise_0.out_channels) == (32, 16)
    assert hasattr(block.conv_s, "weight_orig") and block.conv_s.bias is None
    assert [norm.num_features for norm in block.unused_norms] == [16, 32, 16]
    assert not any(p.requires_grad for p in block.unused_norms.parameters())
    assert not hasattr(CondConvBlock(16, 16, label_nc=7), "conv_s")


def test_label_pyramid_has_one_level_per_resolution_coarsest_first():
    pyramid = LabelPyramid(SEMANTIC_NC, channels=4, levels=4)
    levels = pyramid(label_input(2, 16, 32))
    assert [tuple(level.shape) for level in levels] == [(2, 4, 2, 4), (2, 4, 4, 8), (2, 4, 8, 16), (2, 4, 16, 32)]


@pytest.mark.parametrize("mode", list(NUM_UP))
@pytest.mark.parametrize("ngf", [8, 12])
def test_shapes_and_gradients_reach_every_trainable_parameter(ngf, mode):
    torch.manual_seed(0)
    generator = CCFPSEGenerator(SEMANTIC_NC, ngf=ngf, num_upsampling_layers=mode)
    height, width = 2 ** NUM_UP[mode], 2 ** (NUM_UP[mode] + 1)  # a 1x2 start
    image, attention = generator(label_input(2, height, width), return_attention=True)
    assert image.shape == (2, 3, height, width) and image.abs().max() <= 1 and attention == {}
    image.square().mean().backward()
    frozen = {name for name, p in generator.named_parameters() if not p.requires_grad}
    assert frozen and all(".unused_norms." in name for name in frozen)
    # a bias right before a batch norm legitimately gets ~0 gradient: check weights only
    missing = [name for name, p in generator.named_parameters() if name not in frozen
               and (p.grad is None or (p.dim() > 1 and not p.grad.abs().sum() > 0))]
    assert missing == []
    assert all(p.grad is None for name, p in generator.named_parameters() if name in frozen)
    blocks = 6 if mode == "most" else 5
    assert len(generator.up_blocks) == blocks - 1 and len(generator.label_pyramid.top_down) == NUM_UP[mode]


def test_latent_start_takes_z_and_fixes_the_image_size():
    torch.manual_seed(0)
    generator = CCFPSEGenerator(SEMANTIC_NC, ngf=8, style="vae", z_dim=16, start_size=(1, 2))
    assert isinstance(generator.fc, torch.nn.Linear) and generator.fc.out_features == 16 * 8 * 1 * 2
    assert (generator.style, generator.z_dim, generator.image_size) == ("vae", 16, (32, 64))
    label = label_input(2, 32, 64)
    with torch.no_grad():
        first, second = generator(label, torch.randn(2, 16)), generator(label, torch.randn(2, 16))
        assert first.shape == (2, 3, 32, 64) and not torch.allclose(first, second)
        start = generator._start(label, None)  # no z: the prior's mean
        assert start.shape == (2, 16 * 8, 1, 2) and torch.equal(start, generator._start(label, torch.zeros(2, 16)))
    assert generator.size_error(64, 64) is not None and generator.size_error(32, 64) is None
    with pytest.raises(ValueError, match="makes 32x64 images only"):
        generator(label_input(1, 64, 64))
    with pytest.raises(ValueError, match=r"z must have shape \(2, 16\)"):
        generator(label, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="model.style=off and takes no latent z"):
        CCFPSEGenerator(SEMANTIC_NC, ngf=8)(label, torch.zeros(2, 16))
    with pytest.raises(ValueError, match="needs start_size"):
        CCFPSEGenerator(SEMANTIC_NC, ngf=8, style="vae", z_dim=16)
    with pytest.raises(ValueError, match=r"style must be one of \['off', 'vae'\] for CCFPSEGenerator"):
        CCFPSEGenerator(SEMANTIC_NC, ngf=8, style="noise3d", z_dim=16)


def test_vae_encoder_is_registered_last_and_trains_inside_forward():
    from dagan.losses import kl_divergence

    plain = CCFPSEGenerator(SEMANTIC_NC, ngf=8)
    torch.manual_seed(0)
    vae = CCFPSEGenerator(SEMANTIC_NC, ngf=8, style="vae", z_dim=16, start_size=(1, 1))
    keys = list(vae.state_dict())
    encoder_keys = [k for k in keys if k.startswith("encoder.")]
    assert encoder_keys and keys[-len(encoder_keys):] == encoder_keys  # after every other layer
    # the other layers, in the same order as without a style (only fc differs: a linear map from z)
    shared = [k for k in plain.state_dict() if not k.startswith("fc.")]
    assert shared == [k for k in keys[:-len(encoder_keys)] if not k.startswith("fc.")]
    image, (mu, logvar) = vae(label_input(2, 32, 32), style_image=torch.rand(2, 3, 32, 32) * 2 - 1)
    assert image.shape == (2, 3, 32, 32) and mu.shape == logvar.shape == (2, 16)
    (image.square().mean() + kl_divergence(mu, logvar)).backward()
    assert all(p.grad is not None for p in vae.encoder.parameters()) and vae.fc.weight.grad is not None
    assert vae.encode(torch.zeros(1, 3, 32, 32))[0].shape == (1, 16)
    with pytest.raises(ValueError, match="style_image needs a model.style=vae generator"):
        plain(label_input(1, 32, 32), style_image=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="model.style=off and no style encoder"):
        plain.encode(torch.zeros(1, 3, 32, 32))


def test_build_generator_chooses_ccfpse_and_initialises_it():
    config = config_from_dict({"dataset": {"name": "synthetic"},
                               "model": {"generator": "ccfpse", "ngf": 8}}, "test").resolved()
    generator = build_generator(config, SEMANTIC_NC)
    assert isinstance(generator, CCFPSEGenerator) and generator.semantic_nc == SEMANTIC_NC
    weight = generator.head_0.kernels_0[0].weight
    assert weight.std().item() < 0.01  # xavier normal with gain 0.02, not torch's default
    vae_config = config_from_dict({"dataset": {"name": "synthetic"},  # 64x64, 5 doublings: a 2x2 start
                                   "model": {"generator": "ccfpse", "ngf": 8, "style": "vae", "z_dim": 16}},
                                  "test").resolved()
    vae = build_generator(vae_config, SEMANTIC_NC)
    assert (vae.style, vae.z_dim, vae.start_size, vae.image_size) == ("vae", 16, (2, 2), (64, 64))
    assert vae.encoder.fc_mu.out_features == 16 and vae.encoder.layer1[0].weight_orig.shape[0] == 8  # ndf = ngf


def test_input_size_must_fit_the_upsampling():
    with pytest.raises(ValueError, match="multiples of 32"):
        CCFPSEGenerator(SEMANTIC_NC, ngf=8)(label_input(1, 48, 64))
    with pytest.raises(ValueError, match="even number"):
        CCFPSEGenerator(SEMANTIC_NC, ngf=7)


def test_style_off_builds_and_computes_exactly_as_before_the_style_encoder():
    """Recorded from the generator before model.style=vae existed for CC-FPSE: the same parameters in the same
    order and shapes, the same random numbers drawn by initialisation, the same image (train mode)."""
    import hashlib

    config = config_from_dict({"dataset": {"name": "synthetic"},
                               "model": {"generator": "ccfpse", "ngf": 8}}, "test").resolved()
    torch.manual_seed(0)
    generator = build_generator(config, SEMANTIC_NC)
    assert torch.rand(1).item() == pytest.approx(0.638279914855957, abs=0)  # the initialisation's RNG draws
    layout = ";".join(f"{name}:{tuple(value.shape)}" for name, value in generator.state_dict().items())
    assert hashlib.sha256(layout.encode()).hexdigest()[:16] == "c5f5e9033d11dc1b"
    assert sum(p.numel() for p in generator.parameters()) == 14_049_083
    assert generator.style == "off" and generator.encoder is None and isinstance(generator.fc, torch.nn.Conv2d)
    label = torch.zeros(2, 64, 64, dtype=torch.long)
    label[:, :32] = 1
    label[1, :, :20] = 2
    label[0, 40:, 40:] = 4
    with torch.no_grad():
        image = generator(F.one_hot(label, SEMANTIC_NC).permute(0, 3, 1, 2).float()).double()
    # the sums vary by ~3e-6 with the number of threads
    assert (image.sum().item(), image.abs().sum().item()) == pytest.approx((-65.58338, 240.44065), rel=1e-4)
