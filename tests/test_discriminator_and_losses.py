"""Multiscale discriminator and the losses of paper Eq. 10 on hand-made values."""

import pytest
import torch

from dagan.discriminator import MultiscaleDiscriminator
from dagan.losses import d_hinge_loss, feature_matching_loss, g_hinge_loss, perceptual_loss


def test_discriminator_returns_every_feature_of_every_scale():
    discriminator = MultiscaleDiscriminator(in_channels=7, ndf=8, n_layers=4, num_discriminators=2)
    outputs = discriminator(torch.randn(2, 7, 64, 64))
    assert len(outputs) == 2
    assert [len(scale) for scale in outputs] == [5, 5]
    assert [f.shape[1] for f in outputs[0]] == [8, 16, 32, 64, 1]
    # k4 s2 p2 halves (+1); the second scale sees the input average-pooled to half size
    assert outputs[0][0].shape[-1] == 33 and outputs[1][0].shape[-1] == 17
    sum(f.mean() for scale in outputs for f in scale).backward()
    assert all(p.grad is not None for p in discriminator.parameters())


def test_discriminator_channels_cap_at_512_and_use_spectral_norm_without_bias():
    discriminator = MultiscaleDiscriminator(in_channels=4, ndf=128, n_layers=4, num_discriminators=1)
    convs = [layer[0] for layer in discriminator.scales[0].layers]
    assert [c.out_channels for c in convs] == [128, 256, 512, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert all(hasattr(c, "weight_orig") and c.bias is None for c in convs[1:-1])
    assert convs[0].bias is not None and convs[-1].bias is not None


def _outputs(*logit_values, features=()):
    return [[*features, torch.tensor(v)] for v in logit_values]


def test_hinge_losses_on_known_logits():
    real = _outputs([2.0, 0.5], [0.0, 1.0])
    fake = _outputs([-2.0, 0.0], [1.0, -1.0])
    loss_real, loss_fake = d_hinge_loss(real, fake)
    # scale 1: relu(1 - [2, .5]) = [0, .5] -> .25; scale 2: relu(1 - [0, 1]) = [1, 0] -> .5
    assert loss_real.item() == pytest.approx((0.25 + 0.5) / 2)
    # scale 1: relu(1 + [-2, 0]) = [0, 1] -> .5; scale 2: relu(1 + [1, -1]) = [2, 0] -> 1
    assert loss_fake.item() == pytest.approx((0.5 + 1.0) / 2)
    assert g_hinge_loss(fake).item() == pytest.approx(-(-1.0 + 0.0) / 2)


def test_feature_matching_sums_layers_and_averages_scales_ignoring_logits():
    fake = [[torch.tensor([1.0, 1.0]), torch.tensor([0.0]), torch.tensor([100.0])],
            [torch.tensor([3.0]), torch.tensor([0.0]), torch.tensor([-100.0])]]
    real = [[torch.tensor([0.0, 2.0]), torch.tensor([2.0]), torch.tensor([0.0])],
            [torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([0.0])]]
    # scale 1: |1-0|,|1-2| -> 1; |0-2| -> 2; scale 2: 2 + 0.5; logits ignored
    assert feature_matching_loss(fake, real).item() == pytest.approx((1 + 2 + 2 + 0.5) / 2)


def test_feature_matching_does_not_train_through_real_features():
    real_feature = torch.ones(3, requires_grad=True)
    fake_feature = torch.zeros(3, requires_grad=True)
    feature_matching_loss([[fake_feature, torch.zeros(1)]], [[real_feature, torch.zeros(1)]]).backward()
    assert real_feature.grad is None and fake_feature.grad is not None


def test_perceptual_loss_weights_layers_as_the_paper():
    fake = [torch.full((2,), 1.0) for _ in range(5)]
    real = [torch.zeros(2) for _ in range(5)]
    assert perceptual_loss(fake, real).item() == pytest.approx(1 / 32 + 1 / 16 + 1 / 8 + 1 / 4 + 1)
    with pytest.raises(ValueError, match="weights"):
        perceptual_loss(fake[:4], real[:4])
