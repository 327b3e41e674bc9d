"""Every speed-up (docs/PERFORMANCE.md) keeps the numerics: each fast path against the straightforward one.

The straightforward paths are written out here from the model facts (docs/MODEL.md):
SPADE as BN(x) * (1 + gamma) + beta with the label map resized in every SPADE; torch's own
spectral norm; the G step with fake and real through D in one concatenated batch. Fast and
straightforward paths start from identical copies (deepcopy), so BatchNorm running stats and
spectral-norm vectors start equal. The equivalence is checked in float64, where rounding is
negligible (FLOAT64_REL), so a real difference cannot hide in float32 noise (a deep stack of
batch norms over few values amplifies float32 rounding of the gradients to ~1e-3); outputs
are also checked in float32 (FLOAT32_REL). Tolerances are relative to the largest magnitude
of the reference tensor.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dagan.ccfpse_generator import CCFPSEGenerator
from dagan.discriminator import MultiscaleDiscriminator
from dagan.fpse_discriminator import FPSEDiscriminator
from dagan.generator import DAGANGenerator
from dagan.init import init_weights
from dagan.losses import feature_matching_loss, g_hinge_loss, perceptual_loss
from dagan.nn import conv as conv_module
from dagan.nn.attention import mean as attention_mean
from dagan.nn.conv import Conv2d, conv3x3_as_gemm
from dagan.nn.spade import SPADE
from dagan.nn.spectral import spectral_norm
from dagan.perceptual import VGG19Features
from dagan.train import LossWeights, TrainingState, g_step

SEMANTIC_NC = 6
FLOAT64_REL = 1e-9
FLOAT32_REL = 1e-4  # fp32 rounding of reordered sums
BFLOAT16_REL = 2e-2  # bf16 rounding (8 bits of mantissa) in a product and its gradient


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "",
                        floor: float = 0.0) -> None:
    """max |actual - expected| <= rel * max(max |expected|, floor); the floor is for tensors that
    are zero in exact arithmetic (a bias followed only by batch norms gets no gradient)."""
    scale = max(expected.detach().abs().max().item(), floor)
    error = (actual.detach().double() - expected.detach().double()).abs().max().item()  # float32 would round
    assert error <= rel * scale + 1e-12, f"{what}: max error {error:.3g} vs allowed {rel * scale:.3g}"


def one_hot_labels(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Blocks of classes, so the smallest resized maps differ between samples (BatchNorm variance).
    blocks = torch.randint(0, SEMANTIC_NC, (batch, 4, 4), generator=generator)
    label = blocks.repeat_interleave(height // 4, 1).repeat_interleave(width // 4, 2)
    return F.one_hot(label, SEMANTIC_NC).permute(0, 3, 1, 2).float()


def reference_spade(norm: SPADE, x: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
    normalized = norm.param_free_norm(x)
    label_map = F.interpolate(label_map, size=x.shape[2:], mode="nearest")
    embedding = norm.mlp_shared(label_map)
    return normalized * (1 + norm.mlp_gamma(embedding)) + norm.mlp_beta(embedding)


def reference_block(block, x: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
    shortcut = block.conv_s(reference_spade(block.norm_s, x, label_map)) if block.learned_shortcut else x
    dx = block.conv_0(F.leaky_relu(reference_spade(block.norm_0, x, label_map), 0.2))
    dx = block.conv_1(F.leaky_relu(reference_spade(block.norm_1, dx, label_map), 0.2))
    return shortcut + dx


def reference_generator(generator: DAGANGenerator, label_map: torch.Tensor) -> torch.Tensor:
    """The generator written out plainly: every SPADE resizes the full label map itself."""
    height, width = label_map.shape[2:]
    factor = 2**generator.num_up
    x = generator.fc(F.interpolate(label_map, size=(height // factor, width // factor), mode="nearest"))
    outputs = [reference_block(generator.head_0, x, label_map)]
    outputs.append(reference_block(generator.G_middle_0, F.interpolate(outputs[-1], scale_factor=2), label_map))
    x = F.interpolate(outputs[-1], scale_factor=2) if generator.extra_middle_up else outputs[-1]
    outputs.append(reference_block(generator.G_middle_1, x, label_map))
    for block in generator.up_blocks:
        outputs.append(reference_block(block, F.interpolate(outputs[-1], scale_factor=2), label_map))
    feature = outputs[-1]
    branches = []
    if generator.sam is not None:
        branches.append(generator.sam(feature)[0])
    if generator.cam is not None:
        branches.append(generator.cam(feature, outputs[-2:-1])[0])
    combined = sum(branches[1:], branches[0]) if branches else feature
    return torch.tanh(generator.conv_img(F.leaky_relu(combined, 0.2)))


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("norm_nc", "size"), [(8, (16, 32)), (32, (4, 8))])
def test_spade_with_the_label_map_resized_by_the_caller_matches_the_formula(norm_nc, size):
    torch.manual_seed(0)
    fast = SPADE(norm_nc, SEMANTIC_NC)
    init_weights(fast, gain=1.0)  # non-trivial gamma/beta
    fast = fast.double()
    reference = copy.deepcopy(fast)
    x = torch.randn(2, norm_nc, *size, dtype=torch.float64)
    label_map = one_hot_labels(2, 32, 64).double()
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_fast, out_ref = fast(x_fast, label_map), reference_spade(reference, x_ref, label_map)
    assert_close_scaled(out_fast, out_ref, FLOAT64_REL, "output")
    weight = torch.randn_like(out_ref)
    (out_fast * weight).sum().backward()
    (out_ref * weight).sum().backward()
    assert_close_scaled(x_fast.grad, x_ref.grad, FLOAT64_REL, "input grad")
    grads_fast, grads_ref = _grads(fast), _grads(reference)
    assert set(grads_fast) == set(grads_ref) == {f"{m}.{p}" for m in ("mlp_shared.0", "mlp_gamma", "mlp_beta")
                                                 for p in ("weight", "bias")}
    for name, grad in grads_ref.items():
        assert_close_scaled(grads_fast[name], grad, FLOAT64_REL, name)
    assert torch.equal(fast.param_free_norm.running_var, reference.param_free_norm.running_var)
    float32 = copy.deepcopy(fast).float()
    assert_close_scaled(float32(x.float(), label_map.float()), out_ref, FLOAT32_REL, "float32 output")


def test_spade_takes_a_label_map_already_at_the_feature_size_unchanged():
    torch.manual_seed(0)
    norm = SPADE(4, SEMANTIC_NC)
    x = torch.randn(2, 4, 8, 16)
    label_map = one_hot_labels(2, 32, 64)
    resized = F.interpolate(label_map, size=(8, 16), mode="nearest")
    assert torch.equal(copy.deepcopy(norm)(x, label_map), copy.deepcopy(norm)(x, resized))


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))


@pytest.mark.parametrize("device", ["cpu", CUDA])  # CUDA: the two-pass backward without host syncs
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fused_spectral_norm_matches_torch_spectral_norm(memory_format, device):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1).double()
    reference = torch.nn.utils.spectral_norm(copy.deepcopy(conv)).to(device, memory_format=memory_format)
    fast = spectral_norm(copy.deepcopy(conv)).to(device, memory_format=memory_format)
    fast.load_state_dict(reference.state_dict())  # same keys, same u/v start
    assert list(fast.state_dict()) == list(reference.state_dict()) == ["bias", "weight_orig", "weight_u", "weight_v"]
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64).to(device).contiguous(memory_format=memory_format)
    for step in range(3):  # training mode: one power iteration per forward, gradients through W / sigma
        x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_fast, out_ref = fast(x_fast), reference(x_ref)
        if step == 0:
            assert torch.equal(out_fast, out_ref)  # the same ops in the forward
        assert_close_scaled(out_fast, out_ref, FLOAT64_REL, f"output {step}")  # later: rounding of the updates
        weight = torch.randn_like(out_ref)
        (out_fast * weight).sum().backward()
        (out_ref * weight).sum().backward()
        assert_close_scaled(fast.weight_orig.grad, reference.weight_orig.grad, FLOAT64_REL, "weight_orig grad")
        assert_close_scaled(x_fast.grad, x_ref.grad, FLOAT64_REL, "input grad")
        with torch.no_grad():
            fast.weight_orig.sub_(0.1 * fast.weight_orig.grad)
            reference.weight_orig.sub_(0.1 * reference.weight_orig.grad)
        fast.zero_grad(), reference.zero_grad()
    assert_close_scaled(fast.weight_u, reference.weight_u, FLOAT64_REL, "u")
    assert_close_scaled(fast.weight_v, reference.weight_v, FLOAT64_REL, "v")
    fast.eval(), reference.eval()
    u_before = fast.weight_u.clone()
    assert_close_scaled(fast(x), reference(x), FLOAT64_REL, "eval output")
    assert torch.equal(fast.weight_u, u_before)  # eval mode: no power iteration


class _WeightCopies(TorchDispatchMode):
    """Counts copies (copy_, clone, _to_copy) of tensors with ``numel`` elements."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.copy_, torch.ops.aten.clone, torch.ops.aten._to_copy):
            self.count += args[0].numel() == self.numel
        return func(*args, **(kwargs or {}))


def test_fused_spectral_norm_never_copies_a_channels_last_weight():
    """torch reshapes a channels_last weight into a contiguous matrix (a strided copy of the whole
    weight) in the power iteration, in W / sigma and in the backward; the fused version reads the
    weight's own memory, and W / sigma and its gradient keep the weight's layout."""
    conv = spectral_norm(torch.nn.Conv2d(16, 24, 3, padding=1)).to(memory_format=torch.channels_last)
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with _WeightCopies(conv.weight_orig.numel()) as copies:
        conv(x).square().sum().backward()
    assert copies.count == 0
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight_orig.grad.stride() == conv.weight_orig.stride()
    reference = torch.nn.utils.spectral_norm(torch.nn.Conv2d(16, 24, 3, padding=1))
    reference = reference.to(memory_format=torch.channels_last)
    with _WeightCopies(reference.weight_orig.numel()) as copies:
        reference(x).square().sum().backward()
    assert copies.count > 0  # what the fused version saves


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fused_spectral_norm_under_autocast_equals_torch_spectral_norm(memory_format):
    """Under bf16 autocast (train.amp=bf16) the conv casts the same float32 W / sigma as torch's,
    and the bf16 weight gradient comes back through the fused backward in float32."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 24, 3, padding=1)
    reference = torch.nn.utils.spectral_norm(copy.deepcopy(conv)).to(memory_format=memory_format)
    fast = spectral_norm(copy.deepcopy(conv)).to(memory_format=memory_format)
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=memory_format)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_fast, out_ref = fast(x), reference(x)
    assert torch.equal(fast.weight, reference.weight)
    assert torch.equal(out_fast, out_ref)
    out_fast.float().sum().backward()
    out_ref.float().sum().backward()
    assert fast.weight_orig.grad.dtype == torch.float32
    assert_close_scaled(fast.weight_orig.grad, reference.weight_orig.grad, FLOAT32_REL, "weight_orig grad")


def test_parameters_and_state_dict_keys_are_those_of_the_plain_modules():
    norm = SPADE(4, SEMANTIC_NC)
    assert list(norm.state_dict()) == [
        "param_free_norm.running_mean", "param_free_norm.running_var", "param_free_norm.num_batches_tracked",
        "mlp_shared.0.weight", "mlp_shared.0.bias", "mlp_gamma.weight", "mlp_gamma.bias",
        "mlp_beta.weight", "mlp_beta.bias",
    ]


@pytest.mark.parametrize(("use_sam", "cam_mode", "upsampling", "size"),
                         [(False, "off", "normal", (32, 64)), (True, "II", "more", (64, 64))])
def test_generator_forward_and_backward_match_the_straightforward_path(use_sam, cam_mode, upsampling, size):
    torch.manual_seed(0)
    fast = DAGANGenerator(SEMANTIC_NC, ngf=8, num_upsampling_layers=upsampling, use_sam=use_sam, cam_mode=cam_mode)
    init_weights(fast, gain=1.0)
    fast = fast.double()
    reference = copy.deepcopy(fast)
    float32 = copy.deepcopy(fast).float()
    label_map = one_hot_labels(2, *size).double()
    image_fast, image_ref = fast(label_map), reference_generator(reference, label_map)
    assert image_ref.abs().max() > 0.1  # a real signal, not a vanishing one
    assert_close_scaled(image_fast, image_ref, FLOAT64_REL, "image")
    assert_close_scaled(float32(label_map.float()), image_ref, FLOAT32_REL, "float32 image")
    weight = torch.randn_like(image_ref)
    (image_fast * weight).sum().backward()
    (image_ref * weight).sum().backward()
    grads_fast, grads_ref = _grads(fast), _grads(reference)
    assert set(grads_fast) == set(grads_ref) and len(grads_ref) == len(list(reference.parameters()))
    floor = 1e-3 * max(grad.abs().max().item() for grad in grads_ref.values())
    for name, grad in grads_ref.items():
        assert_close_scaled(grads_fast[name], grad, FLOAT64_REL, name, floor)
    buffers_fast = dict(fast.named_buffers())
    for name, buffer in reference.named_buffers():  # BN running stats, spectral-norm u/v
        assert_close_scaled(buffers_fast[name], buffer, FLOAT64_REL, name)


def _tiny_vgg() -> VGG19Features:
    layers = [torch.nn.Conv2d(3, 4, 3, padding=1)] + [torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1)] * 15
    return VGG19Features(torch.nn.Sequential(*layers))


def reference_g_step(generator, discriminator, optimizer, semantic, real, weights, vgg):
    """The G step of the paper's objective with fake and real through D in one batch."""
    discriminator.requires_grad_(False)
    optimizer.zero_grad(set_to_none=True)
    fake = generator(semantic)
    outputs = discriminator(torch.cat([semantic, semantic]), torch.cat([fake, real]))
    fake_outputs, real_outputs = outputs.split(semantic.shape[0])
    losses = {"g_gan": g_hinge_loss(fake_outputs), "g_feat": feature_matching_loss(fake_outputs, real_outputs),
              "g_vgg": perceptual_loss(vgg(fake), vgg(real))}
    total = weights.gan * losses["g_gan"] + weights.feat * losses["g_feat"] + weights.vgg * losses["g_vgg"]
    total.backward()
    optimizer.step()
    discriminator.requires_grad_(True)
    return {name: value.item() for name, value in losses.items()}


def networks(kind: str) -> tuple[torch.nn.Module, torch.nn.Module, tuple[int, int]]:
    """A tiny (generator, discriminator) pair and an image size that both take."""
    if kind == "dagan":
        return (DAGANGenerator(SEMANTIC_NC, ngf=8, num_upsampling_layers="normal"),
                MultiscaleDiscriminator(SEMANTIC_NC + 3, ndf=8), (32, 64))
    return CCFPSEGenerator(SEMANTIC_NC, ngf=8), FPSEDiscriminator(SEMANTIC_NC, ndf=8), (64, 64)


@pytest.mark.parametrize("kind", ["dagan", "ccfpse"])
def test_g_step_equals_the_concatenated_discriminator_pass(kind):
    """D(real) without gradients and without a second power iteration = one D pass on [fake; real]."""
    torch.manual_seed(0)
    generator, discriminator, (height, width) = networks(kind)
    # CC-FPSE multiplies features by predicted kernels: gain 1 makes them huge, and the batch norms
    # after them amplify float64 rounding to ~1e-8; its own gain keeps the comparison at 1e-9
    init_weights(generator, gain=1.0 if kind == "dagan" else 0.02)
    init_weights(discriminator, gain=0.02)
    generator, discriminator, vgg = generator.double(), discriminator.double(), _tiny_vgg().double()
    semantic = one_hot_labels(2, height, width).double()
    real = torch.rand(2, 3, height, width, dtype=torch.float64) * 2 - 1
    weights = LossWeights(gan=1.0, feat=10.0, vgg=10.0)
    copies = [copy.deepcopy(m) for m in (generator, discriminator)]
    opt_fast = torch.optim.SGD(generator.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(copies[0].parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    state = TrainingState(generator, discriminator, opt_fast, None, scaler, vgg=vgg, weights=weights)  # G step only
    losses, _ = g_step(state, semantic, real)
    expected = reference_g_step(*copies, opt_ref, semantic, real, weights, vgg)
    for name, value in expected.items():
        assert losses[name] == pytest.approx(value, rel=1e-6), name  # g_step reports float32 values
    grads_ref, after_ref = _grads(copies[0]), dict(copies[0].named_parameters())
    floor = 1e-3 * max(grad.abs().max().item() for grad in grads_ref.values())
    for name, parameter in generator.named_parameters():
        if not parameter.requires_grad:  # CC-FPSE's unused batch norms
            continue
        assert_close_scaled(parameter.grad, grads_ref[name], FLOAT64_REL, f"{name} grad", floor)
        assert_close_scaled(parameter, after_ref[name], FLOAT64_REL, name)
    # The spectral-norm power iteration advanced exactly once, as in the concatenated pass.
    reference_buffers = dict(copies[1].named_buffers())
    for name, buffer in discriminator.named_buffers():
        assert torch.equal(buffer, reference_buffers[name]), name
    assert all(module.training for module in discriminator.modules())


@pytest.mark.parametrize("kind", ["dagan", "ccfpse"])
def test_channels_last_keeps_generator_and_discriminator_outputs(kind):
    torch.manual_seed(0)
    generator, discriminator, (height, width) = networks(kind)
    init_weights(generator, gain=1.0)
    semantic = one_hot_labels(2, height, width)
    reference_image = copy.deepcopy(generator)(semantic)
    reference_logits = copy.deepcopy(discriminator)(semantic, reference_image).logits
    generator = generator.to(memory_format=torch.channels_last)
    discriminator = discriminator.to(memory_format=torch.channels_last)
    semantic = semantic.contiguous(memory_format=torch.channels_last)
    image = generator(semantic)
    assert_close_scaled(image, reference_image, 1e-4, "image")
    for index, logits in enumerate(discriminator(semantic, image).logits):
        assert_close_scaled(logits, reference_logits[index], 1e-4, f"logits {index}")


@pytest.mark.parametrize("kind", ["dagan", "ccfpse"])
def test_bf16_autocast_stays_near_float32(kind):
    """bf16 changes the numerics (train.amp=bf16 only); it stays within bf16's resolution here."""
    torch.manual_seed(0)
    generator, _, (height, width) = networks(kind)
    init_weights(generator, gain=1.0)
    semantic = one_hot_labels(2, height, width)
    expected = copy.deepcopy(generator)(semantic)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image = generator(semantic)
    assert image.dtype == torch.bfloat16
    assert_close_scaled(image, expected, 0.25, "bf16 image")
    assert torch.corrcoef(torch.stack([image.float().flatten(), expected.flatten()]))[0, 1] > 0.99


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_training_uses_fused_adam_which_equals_the_per_parameter_loop(device):
    """build_state's Adam is the fused kernel (on CPU too); its update equals the for-loop Adam's
    (docs/MODEL.md, "Optimiser and schedule": beta1 0, beta2 0.9, TTUR) up to float32 rounding."""
    from dagan.config import config_from_dict
    from dagan.distributed import setup
    from dagan.train.state import build_state

    config = config_from_dict({"dataset": {"name": "synthetic"}, "model": {"ngf": 8},
                               "loss": {"lambda_vgg": 0.0}, "train": {"device": device}}, "test").resolved()
    state = build_state(config, SEMANTIC_NC, setup(device))
    for optimizer in (state.optimizer_g, state.optimizer_d):
        assert [group["fused"] for group in optimizer.param_groups] == [True]
    torch.manual_seed(0)
    generator = DAGANGenerator(SEMANTIC_NC, ngf=8).to(device)
    loop_generator = copy.deepcopy(generator)
    settings = {"lr": config.train.lr_g, "betas": (config.train.beta1, config.train.beta2)}
    fused = torch.optim.Adam(generator.parameters(), fused=True, **settings)
    loop = torch.optim.Adam(loop_generator.parameters(), foreach=False, **settings)
    initial = {name: parameter.detach().clone() for name, parameter in generator.named_parameters()}
    gradients = torch.Generator().manual_seed(1)
    for _ in range(3):  # the same gradients for both (a model's own would differ by the rounding of the last step)
        for parameter, loop_parameter in zip(generator.parameters(), loop_generator.parameters(), strict=True):
            parameter.grad = torch.randn(parameter.shape, generator=gradients).to(device)
            loop_parameter.grad = parameter.grad.clone()
        fused.step()
        loop.step()
    loop_parameters = dict(loop_generator.named_parameters())
    for name, parameter in generator.named_parameters():
        assert_close_scaled(parameter, loop_parameters[name], FLOAT32_REL, name)
    weight = "head_0.conv_0.weight_orig"  # the steps moved it by far more than the tolerance
    moved = (generator.get_parameter(weight) - initial[weight]).abs().max()
    assert moved > 100 * FLOAT32_REL * initial[weight].abs().max()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("weight_format", "input_format"), [
    (torch.contiguous_format, torch.contiguous_format), (torch.channels_last, torch.channels_last),
    (torch.channels_last, torch.contiguous_format), (torch.contiguous_format, torch.channels_last)])
def test_conv3x3_as_gemm_equals_the_convolution(weight_format, input_format, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1, bias=bias).double().to(memory_format=weight_format)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64).contiguous(memory_format=input_format)
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_fast = conv3x3_as_gemm(x_fast, conv.weight, conv.bias)
    out_ref = F.conv2d(x_ref, conv.weight, conv.bias, padding=1)
    assert out_fast.shape == out_ref.shape
    assert out_fast.is_contiguous(memory_format=input_format)  # the input's layout, as the convolution keeps it
    assert_close_scaled(out_fast, out_ref, FLOAT64_REL, "output")
    weight = torch.randn_like(out_ref)
    grads_fast = torch.autograd.grad((out_fast * weight).sum(), [x_fast, *conv.parameters()])
    grads_ref = torch.autograd.grad((out_ref * weight).sum(), [x_ref, *conv.parameters()])
    for name, fast, ref in zip(["input", "weight", "bias"], grads_fast, grads_ref, strict=False):
        assert_close_scaled(fast, ref, FLOAT64_REL, f"{name} grad")


def test_conv2d_takes_the_gemm_path_only_for_small_maps(monkeypatch):
    plain, spectral = [], []
    monkeypatch.setattr(conv_module, "conv3x3_as_gemm", lambda *args: plain.append(args) or F.conv2d(*args, padding=1))
    function = conv_module._SpectralConv3x3AsGemm
    apply = function.apply
    monkeypatch.setattr(function, "apply", lambda *args: spectral.append(args) or apply(*args))
    torch.manual_seed(0)
    conv = spectral_norm(Conv2d(4, 4, 3, padding=1))
    conv(torch.randn(1, 4, 8, 16))  # 128 pixels: the GEMM with spectral norm on its output
    Conv2d(4, 4, 3, padding=1)(torch.randn(1, 4, 8, 16))  # without spectral norm: the plain GEMM
    assert len(spectral) == 1 and len(plain) == 1
    conv(torch.randn(1, 4, 16, 16))  # 256 pixels: the convolution, with W / sigma
    Conv2d(4, 4, 3, stride=2, padding=1)(torch.randn(1, 4, 4, 4))
    assert len(spectral) == 1 and len(plain) == 1
    assert list(conv.state_dict()) == ["bias", "weight_orig", "weight_u", "weight_v"]  # as an nn.Conv2d's


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("weight_format", "input_format"), [
    (torch.contiguous_format, torch.contiguous_format), (torch.channels_last, torch.channels_last),
    (torch.channels_last, torch.contiguous_format), (torch.contiguous_format, torch.channels_last)])
def test_spectral_norm_on_the_gemm_output_equals_torch_spectral_norm_then_convolution(weight_format, input_format,
                                                                                       bias):
    """conv(x, W) / sigma with the one-GEMM backward (rank-one term included) against torch's spectral norm
    and F.conv2d: outputs, every gradient, u and v over three training steps, then eval mode."""
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(6, 5, 3, padding=1, bias=bias).double()
    reference = torch.nn.utils.spectral_norm(copy.deepcopy(plain)).to(memory_format=weight_format)
    fast = spectral_norm(Conv2d(6, 5, 3, padding=1, bias=bias)).double().to(memory_format=weight_format)
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64).contiguous(memory_format=input_format)
    for step in range(3):
        x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_fast, out_ref = fast(x_fast), reference(x_ref)
        assert fast.weight is None  # no W / sigma was made
        assert out_fast.is_contiguous(memory_format=input_format)
        assert_close_scaled(out_fast, out_ref, FLOAT64_REL, f"output {step}")
        weight = torch.randn_like(out_ref)
        (out_fast * weight).sum().backward()
        (out_ref * weight).sum().backward()
        assert fast.weight_orig.grad.stride() == fast.weight_orig.stride()
        for name, parameter in reference.named_parameters():
            assert_close_scaled(fast.get_parameter(name).grad, parameter.grad, FLOAT64_REL, f"{name} grad {step}")
        assert_close_scaled(x_fast.grad, x_ref.grad, FLOAT64_REL, "input grad")
        with torch.no_grad():
            for name, parameter in reference.named_parameters():
                fast.get_parameter(name).sub_(0.1 * fast.get_parameter(name).grad)
                parameter.sub_(0.1 * parameter.grad)
        fast.zero_grad(), reference.zero_grad()
        assert_close_scaled(fast.weight_u, reference.weight_u, FLOAT64_REL, "u")
        assert_close_scaled(fast.weight_v, reference.weight_v, FLOAT64_REL, "v")
    fast.eval(), reference.eval()
    u_before = fast.weight_u.clone()
    assert_close_scaled(fast(x), reference(x), FLOAT64_REL, "eval output")
    assert torch.equal(fast.weight_u, u_before)  # eval mode: no power iteration


def test_spectral_norm_on_the_gemm_output_never_writes_a_weight_sized_tensor_but_its_gradient():
    """The point of the path: W / sigma is never written; the weight gradient is written once."""
    conv = spectral_norm(Conv2d(16, 24, 3, padding=1))
    x = torch.randn(1, 16, 4, 8)

    class WeightSized(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == conv.weight_orig.numel() and not func.is_view:
                self.ops.append(func.overloadpacket.__name__)
            return out

    with WeightSized() as written:
        conv(x).square().sum().backward()
    assert written.ops == ["mm"]  # the one GEMM of the weight gradient


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_spectral_norm_on_the_gemm_output_under_autocast_stays_near_torch_spectral_norm(memory_format):
    """Under bf16 autocast the GEMM runs in bf16 as the convolution would; the gradients come back in float32."""
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(16, 24, 3, padding=1)
    reference = torch.nn.utils.spectral_norm(copy.deepcopy(plain)).to(memory_format=memory_format)
    fast = spectral_norm(Conv2d(16, 24, 3, padding=1)).to(memory_format=memory_format)
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(2, 16, 4, 8).contiguous(memory_format=memory_format)
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_fast, out_ref = fast(x_fast), reference(x_ref)
    assert out_fast.dtype == out_ref.dtype == torch.bfloat16
    assert_close_scaled(out_fast, out_ref, BFLOAT16_REL, "output")
    out_fast.float().square().sum().backward()
    out_ref.float().square().sum().backward()
    assert fast.weight_orig.grad.dtype == x_fast.grad.dtype == torch.float32
    for name, parameter in reference.named_parameters():
        assert_close_scaled(fast.get_parameter(name).grad, parameter.grad, BFLOAT16_REL, f"{name} grad")
    assert_close_scaled(x_fast.grad, x_ref.grad, BFLOAT16_REL, "input grad")


@pytest.mark.parametrize("dims", [(1,), (2, 3)])
def test_attention_mean_has_autograds_gradient_as_a_broadcast_view(dims):
    """SAM's channel mean and CAM's spatial mean: the values and gradients of Tensor.mean, with the
    gradient left as a broadcast view (autograd's is materialised in NCHW order, and adding it to a
    channels_last gradient is the slow path)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_fast, out_ref = attention_mean(x_fast, dims), x_ref.mean(dims, keepdim=True)
    assert torch.equal(out_fast, out_ref)
    weight = torch.randn_like(out_ref)
    (grad_fast,) = torch.autograd.grad((out_fast * weight).sum(), x_fast)
    (grad_ref,) = torch.autograd.grad((out_ref * weight).sum(), x_ref)
    assert torch.equal(grad_fast, grad_ref)
    assert 0 in grad_fast.stride()  # a view of the small gradient, not a materialised tensor


@pytest.mark.parametrize("vgg_input", ["official", "imagenet"])
def test_vgg_weights_stored_in_the_autocast_dtype_give_the_same_features_and_gradients(vgg_input):
    """train.amp=bf16: VGG19's frozen weights are cast once (VGG19Features.for_autocast) instead of at every call."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, 4, 3, padding=1)] + [torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1)] * 15
    reference = VGG19Features(torch.nn.Sequential(*layers), vgg_input)
    cast = copy.deepcopy(reference).for_autocast(torch.bfloat16)
    assert next(cast.slices.parameters()).dtype == torch.bfloat16 and cast.mean.dtype == torch.float32
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    x_ref, x_cast = image.clone().requires_grad_(), image.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features_ref, features_cast = reference(x_ref), cast(x_cast)
    for a, b in zip(features_cast, features_ref, strict=True):
        assert torch.equal(a, b)
    sum(f.float().sum() for f in features_ref).backward()
    sum(f.float().sum() for f in features_cast).backward()
    assert torch.equal(x_cast.grad, x_ref.grad)
    assert reference.for_autocast(None) is reference and next(reference.parameters()).dtype == torch.float32
