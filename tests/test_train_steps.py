"""d_step / g_step behaviour, the LR schedule and the EMA generator."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import NUM_CLASSES, SIZE, tiny_config, tiny_settings

from dagan.config import config_from_dict
from dagan.discriminator import build_discriminator
from dagan.ema import ExponentialMovingAverage
from dagan.generator import build_generator
from dagan.labels import semantic_input
from dagan.perceptual import VGG19Features
from dagan.schedule import lr_factor, set_learning_rate
from dagan.train import LossWeights, NonFiniteLossError, TrainingState, d_step, g_step
from dagan.train.plan import TrainingPlan

SEMANTIC_NC = NUM_CLASSES + 1


@pytest.fixture()
def parts(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(tmp_path, tmp_path / "out")
    generator = build_generator(config, SEMANTIC_NC)
    discriminator = build_discriminator(config, SEMANTIC_NC)
    label = torch.randint(0, NUM_CLASSES, (2, SIZE, SIZE))
    instance = torch.randint(0, 3, (2, SIZE, SIZE))
    semantic = semantic_input(label, NUM_CLASSES, instance)
    real = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=4e-4, betas=(0.0, 0.9))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = TrainingState(generator, discriminator, opt_g, opt_d, scaler, weights=LossWeights(1.0, 10.0, 0.0))
    return state, semantic, real


def _snapshot(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def test_g_step_freezes_discriminator_and_updates_generator(parts):
    state, semantic, real = parts
    generator, discriminator = state.generator, state.discriminator
    d_before, g_before = _snapshot(discriminator), _snapshot(generator)
    losses, fake = g_step(state, semantic, real)
    assert set(losses) == {"g_gan", "g_feat", "g_total"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert losses["g_total"] == pytest.approx(losses["g_gan"] + 10.0 * losses["g_feat"], rel=1e-5)
    assert fake.shape == real.shape and not fake.requires_grad
    assert all(p.grad is None for p in discriminator.parameters())
    assert all(p.requires_grad for p in discriminator.parameters())  # unfrozen again afterwards
    d_after = _snapshot(discriminator)
    assert all(torch.equal(d_before[k], d_after[k]) for k in d_before if not k.endswith(("_u", "_v")))
    assert any(not torch.equal(g_before[k], v) for k, v in _snapshot(generator).items() if k.endswith("weight_orig"))
    assert all(p.grad is not None for p in generator.parameters())


def test_d_step_updates_only_discriminator(parts):
    state, semantic, real = parts
    generator, discriminator = state.generator, state.discriminator
    g_weights = {k: v for k, v in _snapshot(generator).items() if "running" not in k and "num_batches" not in k}
    d_before = _snapshot(discriminator)
    losses = d_step(state, semantic, real)
    assert set(losses) == {"d_real", "d_fake"} and all(v >= 0 for v in losses.values())
    assert all(p.grad is None for p in generator.parameters())
    g_after = _snapshot(generator)
    assert all(torch.equal(v, g_after[k]) for k, v in g_weights.items() if not k.endswith(("_u", "_v")))
    assert any(not torch.equal(d_before[k], v) for k, v in _snapshot(discriminator).items() if k.endswith("weight"))


def test_g_step_with_perceptual_loss_uses_the_vgg_passed_in(parts):
    state, semantic, real = parts
    layers = [torch.nn.Conv2d(3, 4, 3, padding=1)] + [torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1)] * 15
    extractor = VGG19Features(torch.nn.Sequential(*layers))  # random, tiny: the slicing of VGG19 on 31 layers
    state.weights = LossWeights(1.0, 10.0, 10.0)
    state.vgg = extractor
    losses, _ = g_step(state, semantic, real)
    assert losses["g_vgg"] > 0
    assert losses["g_total"] == pytest.approx(losses["g_gan"] + 10 * losses["g_feat"] + 10 * losses["g_vgg"], rel=1e-5)
    state.vgg = None
    with pytest.raises(ValueError, match="lambda_vgg"):
        g_step(state, semantic, real)


def test_non_finite_loss_is_refused_before_the_update(parts):
    state, semantic, real = parts
    before = _snapshot(state.generator)
    real = real.clone()
    real[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="g_feat=nan"):
        g_step(state, semantic, real)
    after = _snapshot(state.generator)
    assert all(torch.equal(before[k], after[k]) for k in before if "weight_orig" in k or "bias" in k)


def test_linear_lr_schedule_constant_then_linear_to_zero():
    steps = 10  # per epoch; 2 constant + 2 decay epochs
    assert [lr_factor(s, steps, 2, 2, "linear") for s in (0, 10, 19)] == [1.0, 1.0, 1.0]
    assert lr_factor(20, steps, 2, 2, "linear") == 1.0
    assert lr_factor(25, steps, 2, 2, "linear") == pytest.approx(0.75)
    assert lr_factor(30, steps, 2, 2, "linear") == pytest.approx(0.5)
    assert lr_factor(39, steps, 2, 2, "linear") == pytest.approx(0.05)
    assert lr_factor(40, steps, 2, 2, "linear") == 0.0


def test_official_lr_schedule_steps_once_per_epoch_and_decays_from_the_second_decay_epoch():
    # The official trainer lowers the rate by 1/niter_decay at the end of every epoch after niter:
    # epochs 1..niter+1 (1-based) at the base rate, the last epoch at 1/niter_decay of it.
    steps, niter, niter_decay = 10, 2, 4
    factors = [lr_factor(s, steps, niter, niter_decay, "official") for s in range(0, 60, steps)]
    assert factors == pytest.approx([1.0, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert lr_factor(39, steps, niter, niter_decay, "official") == pytest.approx(0.75)  # constant inside an epoch
    with pytest.raises(ValueError, match="lr schedule"):
        lr_factor(0, steps, niter, niter_decay, "cosine")


def test_set_learning_rate_scales_every_group():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert set_learning_rate(optimizer, 4e-4, 0.5) == pytest.approx(2e-4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)


def test_training_plan_says_what_falls_due_after_each_step(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "out", epochs=2, epochs_decay=1, max_steps=11, log_every=4,
                         sample_every=3, checkpoint_every=5, lr_schedule="linear")
    plan = TrainingPlan.from_config(config.train, steps_per_epoch=4)
    assert plan.total_steps == 11  # max_steps caps the 3 epochs' 12
    assert [plan.epoch(step) for step in (0, 3, 4, 10)] == [0, 0, 1, 2]
    assert [plan.lr_factor(step) for step in (7, 8, 10)] == pytest.approx([1.0, 1.0, 0.5])
    assert [step for step in range(1, 12) if plan.needs_logging(step)] == [4, 8, 11]  # and the last step
    assert [step for step in range(1, 12) if plan.needs_samples(step)] == [3, 6, 9]
    assert [step for step in range(1, 12) if plan.needs_checkpoint(step, stopping=False)] == [5, 10]
    assert [step for step in (3, 11) if plan.needs_checkpoint(step, stopping=True)] == [3]  # the last: final.pt
    assert [plan.is_complete(step) for step in (10, 11)] == [False, True]
    no_samples = TrainingPlan.from_config(tiny_config(tmp_path, tmp_path / "out", sample_every=0).train, 4)
    assert not any(no_samples.needs_samples(step) for step in range(1, 9))


def test_ema_tracks_the_average_and_copies_buffers():
    network = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ExponentialMovingAverage(network, decay=0.9)
    start = network[0].weight.detach().clone()
    with torch.no_grad():
        network[0].weight.add_(1.0)
        network[1].running_mean.fill_(3.0)
    ema.update(network)
    assert torch.allclose(ema.module[0].weight, start + 0.1)
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 3.0))
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="ema_decay"):
        ExponentialMovingAverage(network, decay=1.0)


@pytest.mark.parametrize(("generator_kind", "discriminator_kind"),
                         [("dagan", "fpse"), ("ccfpse", "multiscale"), ("ccfpse", "fpse")])
def test_steps_work_for_every_generator_and_discriminator(tmp_path, generator_kind, discriminator_kind):
    torch.manual_seed(0)
    settings = tiny_settings(tmp_path, tmp_path / "out")
    settings["dataset"].update(load_size=64, crop_size=64)  # the FPSE discriminator needs sides of at least 64
    config = config_from_dict({**settings, "model": {"ngf": 8, "ndf": 8, "num_upsampling_layers": "normal",
                                                     "generator": generator_kind,
                                                     "discriminator": discriminator_kind}}, "tiny").resolved()
    generator, discriminator = build_generator(config, SEMANTIC_NC), build_discriminator(config, SEMANTIC_NC)
    semantic = semantic_input(torch.randint(0, NUM_CLASSES, (2, 64, 64)), NUM_CLASSES, torch.randint(0, 3, (2, 64, 64)))
    real = torch.rand(2, 3, 64, 64) * 2 - 1
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=4e-4, betas=(0.0, 0.9))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    d_before = _snapshot(discriminator)
    state = TrainingState(generator, discriminator, opt_g, opt_d, scaler, weights=LossWeights(1.0, 10.0, 0.0))
    losses, _ = g_step(state, semantic, real)
    assert set(losses) == {"g_gan", "g_feat", "g_total"} and losses["g_feat"] > 0
    assert all(torch.equal(v, _snapshot(discriminator)[k]) for k, v in d_before.items() if not k.endswith(("_u", "_v")))
    assert all(p.grad is not None for p in generator.parameters() if p.requires_grad)
    losses = d_step(state, semantic, real)
    assert set(losses) == {"d_real", "d_fake"} and all(v >= 0 for v in losses.values())


def test_ema_ramp_up_caps_the_half_life_at_a_fraction_of_the_steps_done():
    network = torch.nn.Linear(2, 2)
    ema = ExponentialMovingAverage(network, decay=0.999, rampup=0.05)
    assert ema.beta(1) < 1e-5  # half-life 0.05 steps: the first update copies the weights
    assert ema.beta(1000) == pytest.approx(0.5 ** (1 / 50))  # half-life 50 steps after 1000
    assert ema.beta(10**6) == 0.999  # the decay caps it
    assert ExponentialMovingAverage(network, decay=0.999).beta(1) == 0.999  # no ramp-up: the decay throughout
    start = network.weight.detach().clone()
    with torch.no_grad():
        network.weight.add_(1.0)
    ema.update(network, step=1000)
    assert torch.allclose(ema.module.weight, start + 1 - ema.beta(1000))
    with pytest.raises(ValueError, match="step"):
        ema.update(network)
    with pytest.raises(ValueError, match="ema_rampup"):
        ExponentialMovingAverage(network, decay=0.9, rampup=-1.0)


def test_ema_batch_norm_recalibration_uses_the_averages_own_activations():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = ExponentialMovingAverage(network, decay=0.5)
    with torch.no_grad():
        network[0].weight.mul_(3.0)
        network[1].running_mean.fill_(7.0)
    ema.update(network)  # copies the trained network's statistics: not those of the average's weights
    batches = [torch.randn(5, 3) for _ in range(3)]
    assert ema.recalibrate_batch_norm(batches) == 3
    features = ema.module[0](torch.cat(batches)).detach()
    assert torch.allclose(ema.module[1].running_mean, features.mean(0), atol=1e-6)
    assert ema.module[1].momentum == 0.1 and not ema.module.training
    assert ema.module[1].num_batches_tracked == 3
