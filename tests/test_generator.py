"""The DAGAN generator: every variant, any ngf, all upsampling modes (paper Table 4, Fig. 2)."""

import pytest
import torch
import torch.nn.functional as F

from dagan.config import VARIANTS, config_from_dict
from dagan.generator import NUM_UP, DAGANGenerator, build_generator

SEMANTIC_NC = 5


def make_generator(variant, ngf, mode, cam_sources="official"):
    use_sam, cam = VARIANTS[variant]
    return DAGANGenerator(SEMANTIC_NC, ngf=ngf, num_upsampling_layers=mode, use_sam=use_sam,
                          cam_mode=cam, cam_sources=cam_sources)


def label_input(batch, height, width=None):
    label = torch.randint(0, SEMANTIC_NC, (batch, height, width or height))
    return F.one_hot(label, SEMANTIC_NC).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("mode", list(NUM_UP))
@pytest.mark.parametrize("ngf", [8, 12])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shapes_and_gradients_flow_to_every_parameter(variant, ngf, mode):
    torch.manual_seed(0)
    generator = make_generator(variant, ngf, mode)
    # the smallest input: a 1x2 start (batch norm needs > 1 value per channel at batch 1)
    height, width = 2 ** NUM_UP[mode], 2 ** (NUM_UP[mode] + 1)
    for batch in (1, 2):
        generator.zero_grad()
        image, attention = generator(label_input(batch, height, width), return_attention=True)
        assert image.shape == (batch, 3, height, width)
        assert image.abs().max() <= 1
        image.square().mean().backward()
        # every parameter is in the graph; every weight gets a non-zero gradient (a bias right
        # before a batch norm legitimately gets ~0: the norm removes constant shifts)
        missing = [n for n, p in generator.named_parameters()
                   if p.grad is None or (p.dim() > 1 and not p.grad.abs().sum() > 0)]
        assert missing == [], f"no gradient for {missing}"
    use_sam, cam = VARIANTS[variant]
    channels = ngf // 2 if mode == "most" else ngf
    assert ("sam" in attention) == use_sam
    assert ("cam" in attention) == (cam != "off")
    if use_sam:
        assert attention["sam"].shape == (batch, 1, height, width)
        assert ((attention["sam"] > 0) & (attention["sam"] < 1)).all()
    if cam != "off":
        assert attention["cam"].shape == (batch, channels, 1, 1)


@pytest.mark.parametrize("cam_sources", ["official", "all"])
def test_cam_sources_all_fuses_every_earlier_scale(cam_sources):
    generator = make_generator("B6", 8, "normal", cam_sources)
    expected_sources = 1 if cam_sources == "official" else 3 + 3  # head_0, G_middle_0/1, up_0..up_2
    convs = generator.cam.source_convs
    assert (1 if convs is None else len(convs)) == expected_sources
    image = generator(label_input(2, 32 * 2))
    assert image.shape == (2, 3, 64, 64)


def test_non_square_inputs_and_size_errors():
    generator = make_generator("B6", 8, "more")
    assert generator(label_input(2, 64)).shape == (2, 3, 64, 64)
    assert generator(label_input(1, 64, 128)).shape == (1, 3, 64, 128)
    with pytest.raises(ValueError, match="48x64: height and width must be multiples of 64"):
        generator(torch.zeros(2, SEMANTIC_NC, 48, 64))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_output_is_the_image_head_on_the_sum_of_the_attention_branches(variant):
    """B5/B6: head(F_s + F_c); B2: head(F_s); B3/B4: head(F_c); B1: head(F)."""
    torch.manual_seed(1)
    generator = make_generator(variant, 8, "normal").eval()
    x = label_input(2, 32)
    with torch.no_grad():
        outputs = generator._backbone(x)
        feature = outputs[-1]
        branches = []
        if generator.sam is not None:
            branches.append(feature * generator.sam(feature)[1])
        if generator.cam is not None:
            branches.append(generator.cam(feature, [outputs[-2]])[0])
        combined = sum(branches) if branches else feature
        expected = torch.tanh(generator.conv_img(F.leaky_relu(combined, 0.2)))
        assert torch.allclose(generator(x), expected, atol=1e-6)


def test_official_backbone_widths_at_ngf_64():
    generator = make_generator("B6", 64, "more")
    widths = [(b.conv_0.in_channels, b.conv_1.out_channels) for b in generator.up_blocks]
    assert widths == [(1024, 512), (512, 256), (256, 128), (128, 64)]
    assert generator.cam.fuse.in_channels == 128 and generator.cam.fuse.out_channels == 64
    assert generator.sam.conv.weight.shape == (1, 2, 3, 3)
    assert generator.head_0.learned_shortcut is False and generator.up_blocks[0].learned_shortcut is True


def test_most_adds_an_up_4_block_of_half_width():
    generator = make_generator("B6", 16, "most")
    assert len(generator.up_blocks) == 5
    assert generator.up_blocks[-1].conv_1.out_channels == 8
    assert generator.conv_img.in_channels == 8


def test_build_generator_initialises_spectral_norm_weights_too():
    config = config_from_dict({"model": {"ngf": 8, "init_gain": 0.02}}).resolved()
    generator = build_generator(config, SEMANTIC_NC)
    conv = generator.head_0.conv_0
    # xavier normal with gain 0.02: std = 0.02 * sqrt(2 / (fan_in + fan_out))
    fan_in, fan_out = conv.weight_orig.shape[1] * 9, conv.weight_orig.shape[0] * 9
    expected_std = 0.02 * (2 / (fan_in + fan_out)) ** 0.5
    assert conv.weight_orig.std().item() == pytest.approx(expected_std, rel=0.2)
    assert torch.count_nonzero(conv.bias) == 0


def test_bad_constructor_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_upsampling_layers"):
        DAGANGenerator(3, num_upsampling_layers="lots")
    with pytest.raises(ValueError, match="ngf must be an even"):
        DAGANGenerator(3, ngf=7)
    with pytest.raises(ValueError, match="kernel_size"):
        DAGANGenerator(3, ngf=8, sam_kernel_size=4)
