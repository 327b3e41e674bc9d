"""The discriminators (multiscale PatchGAN, FPSE) and the losses of paper Eq. 10 on hand-made values."""

import pytest
import torch

from dagan.discriminator import MultiscaleDiscriminator
from dagan.fpse_discriminator import FPSEDiscriminator
from dagan.losses import DiscriminatorOutput, d_hinge_loss, feature_matching_loss, g_hinge_loss, perceptual_loss


def test_discriminator_returns_every_feature_of_every_scale():
    discriminator = MultiscaleDiscriminator(in_channels=7, ndf=8, n_layers=4, num_discriminators=2)
    outputs = discriminator(torch.randn(2, 4, 64, 64), torch.randn(2, 3, 64, 64))
    assert len(outputs.logits) == 2 and [len(group) for group in outputs.features] == [4, 4]
    assert [f.shape[1] for f in outputs.features[0]] == [8, 16, 32, 64] and outputs.logits[0].shape[1] == 1
    # k4 s2 p2 halves (+1); the second scale sees the input average-pooled to half size
    assert outputs.features[0][0].shape[-1] == 33 and outputs.features[1][0].shape[-1] == 17
    (sum(f.mean() for group in outputs.features for f in group) + sum(x.mean() for x in outputs.logits)).backward()
    assert all(p.grad is not None for p in discriminator.parameters())


def test_fpse_scores_three_pyramid_levels_and_matches_four_encoder_features():
    torch.manual_seed(0)
    discriminator = FPSEDiscriminator(semantic_nc=5, ndf=8)
    semantic, image = torch.rand(2, 5, 64, 128), torch.rand(2, 3, 64, 128)
    outputs = discriminator(semantic, image)
    assert [tuple(x.shape) for x in outputs.logits] == [(2, 1, 16, 32), (2, 1, 8, 16), (2, 1, 4, 8)]
    assert [[tuple(f.shape) for f in group] for group in outputs.features] == [
        [(2, 16, 16, 32)], [(2, 32, 8, 16)], [(2, 64, 4, 8)], [(2, 64, 2, 4)]]
    (sum(x.mean() for x in outputs.logits) + sum(g[0].mean() for g in outputs.features)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminator.parameters())


def test_fpse_sees_the_label_map_only_through_the_semantic_embedding():
    torch.manual_seed(0)
    discriminator = FPSEDiscriminator(semantic_nc=5, ndf=8).eval()  # eval: no power iteration between calls
    image = torch.rand(1, 3, 64, 64)
    labels = torch.rand(1, 5, 64, 64), torch.rand(1, 5, 64, 64)
    first, second = (discriminator(label, image) for label in labels)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first.features, second.features, strict=True))
    assert not torch.allclose(first.logits[0], second.logits[0])
    with torch.no_grad():  # without the embedding the score is the plain real/fake patch score
        discriminator.label_embedding.weight.zero_()
        discriminator.label_embedding.bias.zero_()
        first, second = (discriminator(label, image) for label in labels)
    assert all(torch.equal(a, b) for a, b in zip(first.logits, second.logits, strict=True))


@pytest.mark.parametrize("size", [(32, 64), (48, 64)])
def test_fpse_refuses_sizes_it_cannot_take(size):
    with pytest.raises(ValueError, match="multiples of 32 and at least 64"):
        FPSEDiscriminator(semantic_nc=5, ndf=8)(torch.rand(1, 5, *size), torch.rand(1, 3, *size))


def test_discriminator_channels_cap_at_512_and_use_spectral_norm_without_bias():
    discriminator = MultiscaleDiscriminator(in_channels=4, ndf=128, n_layers=4, num_discriminators=1)
    convs = [layer[0] for layer in discriminator.scales[0].layers]
    assert [c.out_channels for c in convs] == [128, 256, 512, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert all(hasattr(c, "weight_orig") and c.bias is None for c in convs[1:-1])
    assert convs[0].bias is not None and convs[-1].bias is not None


def _outputs(*logit_values):
    return DiscriminatorOutput([torch.tensor(v) for v in logit_values], [[] for _ in logit_values])


def test_hinge_losses_on_known_logits():
    real = _outputs([2.0, 0.5], [0.0, 1.0])
    fake = _outputs([-2.0, 0.0], [1.0, -1.0])
    loss_real, loss_fake = d_hinge_loss(real, fake)
    # scale 1: relu(1 - [2, .5]) = [0, .5] -> .25; scale 2: relu(1 - [0, 1]) = [1, 0] -> .5
    assert loss_real.item() == pytest.approx((0.25 + 0.5) / 2)
    # scale 1: relu(1 + [-2, 0]) = [0, 1] -> .5; scale 2: relu(1 + [1, -1]) = [2, 0] -> 1
    assert loss_fake.item() == pytest.approx((0.5 + 1.0) / 2)
    assert g_hinge_loss(fake).item() == pytest.approx(-(-1.0 + 0.0) / 2)


def test_feature_matching_sums_within_groups_and_averages_over_groups_ignoring_logits():
    t = torch.tensor
    fake = DiscriminatorOutput([t([100.0]), t([-100.0])], [[t([1.0, 1.0]), t([0.0])], [t([3.0]), t([0.0])]])
    real = DiscriminatorOutput([t([0.0]), t([0.0])], [[t([0.0, 2.0]), t([2.0])], [t([1.0]), t([0.5])]])
    # multiscale, a group per scale: scale 1: |1-0|,|1-2| -> 1; |0-2| -> 2; scale 2: 2 + 0.5; logits ignored
    assert feature_matching_loss(fake, real).item() == pytest.approx((1 + 2 + 2 + 0.5) / 2)
    # FPSE, a group per feature: the official CC-FPSE loss, the mean of the features' L1 distances
    as_single_groups = [DiscriminatorOutput(o.logits, [[f] for group in o.features for f in group])
                        for o in (fake, real)]
    assert feature_matching_loss(*as_single_groups).item() == pytest.approx((1 + 2 + 2 + 0.5) / 4)


def test_feature_matching_does_not_train_through_real_features():
    real_feature = torch.ones(3, requires_grad=True)
    fake_feature = torch.zeros(3, requires_grad=True)
    logits = [torch.zeros(1)]
    fake, real = DiscriminatorOutput(logits, [[fake_feature]]), DiscriminatorOutput(logits, [[real_feature]])
    feature_matching_loss(fake, real).backward()
    assert real_feature.grad is None and fake_feature.grad is not None


def test_discriminator_output_splits_a_fake_and_real_batch():
    outputs = DiscriminatorOutput([torch.arange(4.0)], [[torch.arange(8.0).view(4, 2)]])
    fake, real = outputs.split(1)
    assert fake.logits[0].tolist() == [0.0] and real.logits[0].tolist() == [1.0, 2.0, 3.0]
    assert fake.features[0][0].tolist() == [[0.0, 1.0]] and len(real.features[0][0]) == 3


def test_perceptual_loss_weights_layers_as_the_paper():
    fake = [torch.full((2,), 1.0) for _ in range(5)]
    real = [torch.zeros(2) for _ in range(5)]
    assert perceptual_loss(fake, real).item() == pytest.approx(1 / 32 + 1 / 16 + 1 / 8 + 1 / 4 + 1)
    with pytest.raises(ValueError, match="weights"):
        perceptual_loss(fake[:4], real[:4])
