"""SAM (Eqs. 1-3) and CAM (Eqs. 5-9) on hand-made tensors."""

import pytest
import torch
from torch import nn

from dagan.nn.attention import ChannelAttention, SpatialAttention


def test_sam_is_sigmoid_of_a_conv_over_channel_mean_and_max():
    sam = SpatialAttention(kernel_size=1)
    with torch.no_grad():
        sam.conv.weight.copy_(torch.tensor([2.0, -1.0]).view(1, 2, 1, 1))  # 2 * mean - 1 * max
    feature = torch.tensor([[[[1.0, 4.0]], [[3.0, -2.0]]]])  # (1, 2, 1, 2)
    out, attention = sam(feature)
    mean = torch.tensor([2.0, 1.0])
    maximum = torch.tensor([3.0, 4.0])
    expected_attention = torch.sigmoid(2 * mean - maximum).view(1, 1, 1, 2)
    assert torch.allclose(attention, expected_attention)
    assert torch.allclose(out, feature * expected_attention)


def test_sam_kernel_size_is_a_parameter():
    sam = SpatialAttention(kernel_size=7)
    assert sam.conv.weight.shape == (1, 2, 7, 7) and sam.conv.bias is None
    out, attention = sam(torch.randn(2, 4, 9, 9))
    assert out.shape == (2, 4, 9, 9) and attention.shape == (2, 1, 9, 9)


def _identity_cam(mode):
    """A CAM whose F~ is the (x1 upsampled) source itself and whose gamma is a known function."""
    cam = ChannelAttention(channels=2, source_channels=[2], mode=mode)
    with torch.no_grad():
        cam.fuse.weight.zero_()
        cam.fuse.weight[0, 0, 1, 1] = 1.0
        cam.fuse.weight[1, 1, 1, 1] = 1.0
        cam.fuse.bias.zero_()
        # gamma = expand(relu(reduce(alpha))); reduce picks alpha's F channels, expand is identity
        cam.reduce.weight.zero_()
        cam.reduce.weight[0, 2] = 1.0
        cam.reduce.weight[1, 3] = 1.0
        cam.reduce.bias.zero_()
        nn.init.eye_(cam.expand.weight.view(2, 2))
        cam.expand.bias.zero_()
    return cam


def test_cam_equations_8_and_9_differ_as_in_the_paper():
    feature = torch.tensor([[[[1.0, 3.0]], [[2.0, 2.0]]]])  # F: (1, 2, 1, 2); channel means 2, 2
    source = torch.tensor([[[[5.0, -1.0]], [[0.0, 4.0]]]])  # F~ (identity fuse)
    delta = torch.sigmoid(torch.tensor([2.0, 2.0])).view(1, 2, 1, 1)  # sigmoid(relu(mean(F)))
    out_1, delta_1 = _identity_cam("I")(feature, [source])
    out_2, delta_2 = _identity_cam("II")(feature, [source])
    assert torch.allclose(delta_1, delta) and torch.allclose(delta_2, delta)
    assert torch.allclose(out_1, delta * source + feature)  # Eq. 8
    assert torch.allclose(out_2, delta * feature + source)  # Eq. 9
    assert not torch.allclose(out_1, out_2)


def test_cam_upsamples_the_previous_scale_to_the_feature_size():
    cam = _identity_cam("II")
    feature = torch.zeros(1, 2, 4, 4)
    source = torch.arange(8.0).view(1, 2, 2, 2)
    fused = cam.fused_sources([source], feature.shape[2:])
    assert torch.equal(fused, source.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


def test_cam_with_several_sources_projects_then_fuses():
    cam = ChannelAttention(channels=3, source_channels=[8, 6, 4], mode="II")
    sources = [torch.randn(2, 8, 2, 2), torch.randn(2, 6, 4, 4), torch.randn(2, 4, 8, 8)]
    out, delta = cam(torch.randn(2, 3, 16, 16), sources)
    assert out.shape == (2, 3, 16, 16) and delta.shape == (2, 3, 1, 1)
    assert cam.fuse.in_channels == 9
    with pytest.raises(ValueError, match="built for 3 sources"):
        cam(torch.randn(2, 3, 16, 16), sources[:2])


def test_cam_rejects_unknown_modes():
    with pytest.raises(ValueError, match="'I' or 'II'"):
        ChannelAttention(4, [8], mode="III")
