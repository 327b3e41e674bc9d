"""Multimodal synthesis: SPADE's style encoder (model.style=vae) and OASIS's 3D noise (noise3d).

Layout and official facts: docs/MULTIMODAL.md. Parameter counts: tests/test_describe.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_fixtures import SIZE, png, tiny_config, write_checkpoint, write_prepared
from PIL import Image

from dagan.__main__ import main as dagan_main
from dagan.ccfpse_generator import CCFPSEGenerator
from dagan.checkpoint import load_generator
from dagan.config import ConfigError, config_from_dict
from dagan.generator import DAGANGenerator, build_generator
from dagan.inference import load_synthesizer
from dagan.latent import seeded_normal
from dagan.losses import kl_divergence
from dagan.nn.style import StyleEncoder, reparameterize

SEMANTIC_NC = 5
Z_DIM = 8
OFFICIAL_ENCODER_KEYS = (
    [f"layer{i}.0.{name}" for i in range(1, 7) for name in ("weight_orig", "weight_u", "weight_v")]
    + ["fc_mu.weight", "fc_mu.bias", "fc_var.weight", "fc_var.bias"]
)


def semantic(batch: int = 2, size: int = SIZE) -> torch.Tensor:
    label = torch.zeros(batch, size, size, dtype=torch.long)
    label[:, : size // 2] = 1
    label[1:, :, : size // 3] = 2
    return F.one_hot(label, SEMANTIC_NC).permute(0, 3, 1, 2).float()


def generator(style: str, ngf: int = 8, kind: str = "dagan") -> DAGANGenerator | CCFPSEGenerator:
    torch.manual_seed(0)
    start = (1, 1) if style == "vae" else None  # 32x32 images with 5 doublings
    network = CCFPSEGenerator if kind == "ccfpse" else DAGANGenerator
    return network(SEMANTIC_NC, ngf=ngf, style=style, z_dim=Z_DIM, start_size=start)


def first_norm(network: torch.nn.Module) -> torch.nn.BatchNorm2d:
    """The batch norm that sees the start map fc(z): SPADE's parameter-free norm (DAGAN), the block's BN (CC-FPSE)."""
    norm = network.head_0.norm_0
    return norm if isinstance(norm, torch.nn.BatchNorm2d) else norm.param_free_norm


def test_encoder_keys_map_one_to_one_onto_the_official_conv_encoder():
    encoder = StyleEncoder(ndf=64, z_dim=256)
    assert list(encoder.state_dict()) == OFFICIAL_ENCODER_KEYS
    assert sum(p.numel() for p in encoder.parameters()) == 10_463_424
    shapes = {name: tuple(p.shape) for name, p in encoder.named_parameters()}
    assert shapes["layer1.0.weight_orig"] == (64, 3, 3, 3) and shapes["layer6.0.weight_orig"] == (512, 512, 3, 3)
    assert shapes["fc_mu.weight"] == (256, 512 * 4 * 4)
    g = generator("vae")
    assert [k for k in g.state_dict() if k.startswith("encoder.")] == [f"encoder.{k}" for k in OFFICIAL_ENCODER_KEYS]
    assert isinstance(g.fc, torch.nn.Linear) and g.fc.out_features == 16 * 8 * 1 * 1


def test_encoder_resizes_any_photo_to_256_and_gives_mu_and_logvar():
    encoder = StyleEncoder(ndf=4, z_dim=Z_DIM)
    for size in ((32, 32), (48, 80), (256, 256)):
        mu, logvar = encoder(torch.rand(2, 3, *size) * 2 - 1)
        assert mu.shape == logvar.shape == (2, Z_DIM)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) RGB images"):
        encoder(torch.rand(2, 1, 32, 32))


def test_kl_divergence_and_reparameterisation():
    assert float(kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4))) == 0.0
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, -1.0]])
    expected = 0.5 * sum(m * m + np.exp(v) - 1 - v for m, v in ((1.0, 0.5), (-2.0, -1.0)))
    assert float(kl_divergence(mu, logvar)) == pytest.approx(expected)
    assert float(kl_divergence(mu.repeat(2, 1), logvar.repeat(2, 1))) == pytest.approx(2 * expected)  # a sum
    noise = torch.tensor([[2.0, 1.0]])
    torch.testing.assert_close(reparameterize(mu, logvar, noise), mu + torch.exp(0.5 * logvar) * noise)


@pytest.mark.parametrize("style", ["vae", "noise3d"])
def test_the_latent_changes_the_image_and_gradients_reach_every_parameter(style):
    g = generator(style)
    x = semantic()
    z = seeded_normal(1, (2, Z_DIM))
    assert not torch.equal(g(x, z), g(x, z * 0 + 1))
    if style == "vae":  # training: the encoder runs inside forward and returns the posterior
        image, (mu, logvar) = g(x, style_image=torch.rand(2, 3, SIZE, SIZE) * 2 - 1)
        (image.square().mean() + kl_divergence(mu, logvar)).backward()
    else:
        g(x, z).square().mean().backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None]
    assert not missing
    if style == "noise3d":  # fc and every SPADE see z_dim + semantic_nc channels
        assert g.fc.in_channels == Z_DIM + SEMANTIC_NC
        assert g.head_0.norm_0.mlp_shared[0].in_channels == Z_DIM + SEMANTIC_NC


def test_without_a_latent_the_output_is_z_zero_and_deterministic():
    for style in ("vae", "noise3d"):
        g = generator(style).eval()
        x = semantic()
        with torch.no_grad():
            assert torch.equal(g(x), g(x, torch.zeros(2, Z_DIM)))


@pytest.mark.parametrize(("kind", "style"), [("dagan", "vae"), ("dagan", "noise3d"), ("ccfpse", "vae")])
def test_ema_batch_norm_recalibration_draws_the_latent_as_training_does(kind, style):
    from dagan.ema import ExponentialMovingAverage
    from dagan.generator import run_generator
    from dagan.train.steps import calibration_fake

    def recalibrated(forward):
        ema = ExponentialMovingAverage(generator(style, kind=kind), decay=0.5)
        batch = (semantic(), torch.rand(2, 3, SIZE, SIZE) * 2 - 1, 3)
        rng = torch.get_rng_state()
        ema.recalibrate_batch_norm([batch], forward)
        return first_norm(ema.module).running_var, torch.equal(torch.get_rng_state(), rng)

    variance, rng_kept = recalibrated(lambda module, batch: calibration_fake(module, *batch))
    assert rng_kept  # seeded noise: a checkpoint's recalibration draws nothing from torch's RNG (exact resumes)
    assert torch.equal(variance, recalibrated(lambda module, batch: calibration_fake(module, *batch))[0])
    at_zero, _ = recalibrated(lambda module, batch: run_generator(module, batch[0]))
    assert variance.mean() > 1e-3 and not torch.allclose(variance, at_zero)
    if style == "vae":  # z = 0 gives every image the same start map fc(0): a variance of 0, saturated images
        assert float(at_zero.max()) == 0.0


def test_latent_and_size_errors():
    off = generator("off")
    with pytest.raises(ValueError, match="model.style=off and takes no latent"):
        off(semantic(), torch.zeros(2, Z_DIM))
    with pytest.raises(ValueError, match="no style encoder"):
        generator("noise3d").encode(torch.zeros(1, 3, SIZE, SIZE))
    vae = generator("vae")
    with pytest.raises(ValueError, match=r"z must have shape \(2, 8\)"):
        vae(semantic(), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="makes 32x32 images only"):
        vae(semantic(size=64))
    with pytest.raises(ValueError, match="needs start_size"):
        DAGANGenerator(SEMANTIC_NC, ngf=8, style="vae")


def test_style_off_builds_exactly_the_model_it_built_before():
    config = config_from_dict({"model": {"ngf": 8}}).resolved()
    assert config.model.style == "off" and config.model.z_dim is None
    torch.manual_seed(0)
    g = build_generator(config, SEMANTIC_NC)
    after = torch.rand(1)
    assert g.encoder is None and isinstance(g.fc, torch.nn.Conv2d) and g.fc.in_channels == SEMANTIC_NC
    assert not any(k.startswith("encoder") for k in g.state_dict())
    torch.manual_seed(0)
    plain = DAGANGenerator(SEMANTIC_NC, ngf=8)  # the constructor without any style argument
    from dagan.init import init_weights

    init_weights(plain, config.model.init_gain)
    assert torch.equal(after, torch.rand(1))  # the same initialisation RNG consumption
    for (name, value), (other, expected) in zip(g.state_dict().items(), plain.state_dict().items(), strict=True):
        assert name == other and torch.equal(value, expected), name


def test_config_defaults_and_errors():
    vae = config_from_dict({"model": {"style": "vae"}}).resolved()
    noise = config_from_dict({"model": {"style": "noise3d"}}).resolved()
    assert (vae.model.z_dim, noise.model.z_dim, vae.loss.lambda_kld) == (256, 64, 0.05)
    assert config_from_dict({"model": {"style": "vae", "z_dim": 32}}).resolved().model.z_dim == 32
    with pytest.raises(ConfigError, match="model.style=off has no latent"):
        config_from_dict({"model": {"z_dim": 32}})
    with pytest.raises(ConfigError, match="not one of: off, vae, noise3d"):
        config_from_dict({"model": {"style": "gaussian"}})
    with pytest.raises(ConfigError, match="num_style_samples=1 must be >= 2"):
        config_from_dict({"evaluate": {"num_style_samples": 1}})
    ccfpse = config_from_dict({"model": {"style": "vae", "generator": "ccfpse"}}).resolved()
    assert (ccfpse.model.style, ccfpse.model.z_dim) == ("vae", 256)  # CC-FPSE's official --use_vae
    with pytest.raises(ConfigError, match="model.style=noise3d .* DAGAN generator only; CC-FPSE has no 3D-noise"):
        config_from_dict({"model": {"style": "noise3d", "generator": "ccfpse"}})
    for style in ("vae", "noise3d"):
        with pytest.raises(ConfigError, match=f"model.style={style} is built into the DAGAN and CC-FPSE generators "
                                              "only; model.generator=ca2sis has per-class styles of its own"):
            config_from_dict({"model": {"style": style, "generator": "ca2sis"}})


@pytest.fixture(scope="module", params=["dagan", "ccfpse"])
def trained_vae(request, tmp_path_factory):
    """A vae model (DAGAN B6, CC-FPSE) trained 2 steps on the tiny dataset: (checkpoint, prepared dir, losses of
    each step)."""
    from dagan.train import NullLogger, train

    root = tmp_path_factory.mktemp(f"vae-{request.param}")
    prepared = write_prepared(root / "prepared", {"train": 4, "val": 2})
    config = tiny_config(root, model={"style": "vae", "z_dim": Z_DIM, "generator": request.param},
                         train={"batch_size": 2, "max_steps": 2})
    steps = []

    class Recorder(NullLogger):
        def should_stop(self, report):
            steps.append(dict(report.metrics))
            return False

    train(config, Recorder())
    return root / "train" / "checkpoints" / "final.pt", prepared, steps


def test_a_vae_trains_with_the_kl_term_and_its_encoder_in_the_checkpoint(trained_vae):
    checkpoint, _, steps = trained_vae
    assert len(steps) == 2 and all(step["g_kld"] > 0 for step in steps)
    state = torch.load(checkpoint, weights_only=True)
    encoder_keys = [k for k in state["generator"] if k.startswith("encoder.")]
    assert encoder_keys == [f"encoder.{k}" for k in OFFICIAL_ENCODER_KEYS]
    # the encoder trains with G's optimiser: Adam holds state for every parameter of G, encoder included
    generator, _, _ = load_generator(checkpoint)
    kind = {"dagan": DAGANGenerator, "ccfpse": CCFPSEGenerator}[state["config"]["model"]["generator"]]
    assert type(generator) is kind and generator.style == "vae"
    # (CC-FPSE's unused batch norms are frozen, docs/CCFPSE.md: they get no gradient, hence no Adam state)
    assert len(state["optimizer_g"]["state"]) == len([p for p in generator.parameters() if p.requires_grad])
    assert len(list(generator.encoder.parameters())) == 6 + 4  # six conv weights, two linear heads


def label_map() -> np.ndarray:
    label = np.zeros((SIZE, SIZE), np.int64)
    label[: SIZE // 2] = 2
    label[:, : SIZE // 4] = 1
    return label


def test_seeds_pick_images_reproducibly_and_the_default_stays_deterministic(trained_vae):
    checkpoint, prepared, _ = trained_vae
    synthesizer = load_synthesizer(checkpoint, manifest_dir=prepared)
    generator, semantic_input = synthesizer.generator, torch.zeros(1, SEMANTIC_NC, SIZE, SIZE)
    semantic_input[:, 2] = 1
    with torch.no_grad():
        images = {seed: generator(semantic_input, synthesizer.latent(seed, None, "test")) for seed in (1, 2)}
        again = generator(semantic_input, synthesizer.latent(1, None, "test"))
        default = [generator(semantic_input, synthesizer.latent(None, None, "test")) for _ in range(2)]
    assert torch.equal(images[1], again)
    assert (images[1] - images[2]).abs().mean() > 1e-6
    assert torch.equal(default[0], default[1]) and torch.equal(default[0], generator(semantic_input))
    # through the PNG path as well: same seed, same bytes
    label = label_map()
    first = synthesizer(label, edges_from_labels=True, seed=5)
    assert np.array_equal(first, synthesizer(label, edges_from_labels=True, seed=5))


def test_a_style_photo_sets_z_to_its_posterior_mean(trained_vae):
    checkpoint, prepared, _ = trained_vae
    synthesizer = load_synthesizer(checkpoint, manifest_dir=prepared)
    photo = np.zeros((40, 60, 3), np.uint8)
    photo[:, :30] = (250, 20, 20)
    z = synthesizer.latent(None, photo, "test")
    expected_photo = torch.from_numpy(np.asarray(Image.fromarray(photo).resize((SIZE, SIZE), Image.Resampling.BICUBIC),
                                                 dtype=np.float32))
    with torch.no_grad():
        mu, logvar = synthesizer.generator.encode((expected_photo / 127.5 - 1).permute(2, 0, 1)[None])
    torch.testing.assert_close(z, mu)
    sampled = synthesizer.latent(3, photo, "test")
    torch.testing.assert_close(sampled, reparameterize(mu, logvar, seeded_normal(3, (1, Z_DIM))))
    other = synthesizer.latent(None, 255 - photo, "test")
    assert not torch.equal(z, other)


def _write_inputs(root):
    labels = root / "labels"
    labels.mkdir()
    (labels / "scene.png").write_bytes(png(label_map().astype(np.uint8)))
    photo = np.zeros((48, 48, 3), np.uint8)
    photo[::2] = (30, 200, 90)
    (root / "style.jpg").write_bytes(_jpeg(photo))
    return labels, root / "style.jpg"


def _jpeg(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_generate_cli_style_transfer_seeds_and_samples(trained_vae, tmp_path, capsys):
    checkpoint, prepared, _ = trained_vae
    labels, style = _write_inputs(tmp_path)
    common = ["generate", "--model", str(checkpoint), "--manifest", str(prepared), "--labels", str(labels),
              "--edges-from-labels"]
    assert dagan_main([*common, "--out", str(tmp_path / "styled"), "--style", str(style)]) == 0
    assert dagan_main([*common, "--out", str(tmp_path / "plain")]) == 0
    styled = np.asarray(Image.open(tmp_path / "styled" / "scene.png"))
    synthesizer = load_synthesizer(checkpoint, manifest_dir=prepared)
    photo = np.asarray(Image.open(style).convert("RGB"))
    assert np.array_equal(styled, synthesizer(label_map(), edges_from_labels=True, style=photo))
    assert dagan_main([*common, "--out", str(tmp_path / "many"), "--seed", "7", "--num-samples", "3"]) == 0
    names = sorted(p.name for p in (tmp_path / "many").glob("*.png"))  # beside index.html and its html/ pictures
    assert names == ["scene-seed7.png", "scene-seed8.png", "scene-seed9.png"]
    page = (tmp_path / "many" / "index.html").read_text()
    assert all(f'src="{name}"' in page for name in names)  # one row per sample on the results page
    seed8 = np.asarray(Image.open(tmp_path / "many" / "scene-seed8.png"))
    assert np.array_equal(seed8, synthesizer(label_map(), edges_from_labels=True, seed=8))
    assert "wrote 3 image(s)" in capsys.readouterr().out


def test_generate_cli_refuses_what_a_model_cannot_take(tmp_path, capsys):
    labels, style = _write_inputs(tmp_path)
    write_prepared(tmp_path / "prepared", {"train": 2})
    for name, model in (("off", {}), ("noise3d", {"style": "noise3d", "z_dim": Z_DIM})):
        checkpoint = write_checkpoint(tiny_config(tmp_path, model=model), tmp_path / f"{name}.pt")
        out = tmp_path / f"out-{name}"
        flags = ["--seed", "1"] if name == "off" else ["--style", str(style)]
        assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(out),
                           "--edges-from-labels", *flags]) == 2
        error = capsys.readouterr().err
        expected = "trained with model.style=off" if name == "off" else "model.style=noise3d and no style encoder"
        assert expected in error
        assert not out.exists()
    missing = tmp_path / "nope.jpg"
    checkpoint = write_checkpoint(tiny_config(tmp_path, model={"style": "vae", "z_dim": Z_DIM}), tmp_path / "v.pt")
    assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(tmp_path / "o"),
                       "--edges-from-labels", "--style", str(missing)]) == 2
    assert f"--style {missing}: no such file" in capsys.readouterr().err
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert dagan_main(["generate", "--model", str(checkpoint), "--labels", str(labels), "--out", str(tmp_path / "o"),
                       "--edges-from-labels", "--style", str(tmp_path / "broken.jpg")]) == 2
    assert "broken.jpg: not a readable image" in capsys.readouterr().err


def test_a_noise3d_model_trains_and_its_seeds_pick_images(tmp_path):
    from dagan.train import NullLogger, train

    write_prepared(tmp_path / "prepared", {"train": 4})
    config = tiny_config(tmp_path, model={"style": "noise3d", "z_dim": Z_DIM}, train={"batch_size": 2, "max_steps": 1})
    result = train(config, NullLogger())
    assert result.step == 1 and "g_kld" not in result.metrics and np.isfinite(result.metrics["g_total"])
    synthesizer = load_synthesizer(result.checkpoint, manifest_dir=tmp_path / "prepared")
    label = label_map()
    with torch.no_grad():
        latents = [synthesizer.latent(seed, None, "test") for seed in (0, 0, 1)]
    torch.testing.assert_close(latents[0], latents[1])
    assert not torch.equal(latents[0], latents[2])
    assert np.array_equal(synthesizer(label, edges_from_labels=True, seed=3),
                          synthesizer(label, edges_from_labels=True, seed=3))
