"""Parameter counts equal the official models' (docs/MODEL.md, "Parameter counts") for every preset."""

import json

import pytest

from dagan.__main__ import describe, main
from dagan.config import VARIANTS

# preset: (semantic_nc, G B6, G B1, D) of the official implementation
OFFICIAL = {
    "cityscapes": (36, 93_134_229, 93_048_003, 5_601_410),
    "ade20k": (151, 96_578_709, 96_492_483, 5_836_930),
    "celebamask_hq": (19, 92_625_045, 92_538_819, 5_566_594),
    "facades": (13, 92_445_333, 92_359_107, 5_554_306),
    "coco_stuff": (184, 97_567_125, 97_480_899, 5_904_514),
}
SAM_PARAMS = 2 * 3 * 3
OFFICIAL_ENCODER = 10_463_424  # SPADE's style encoder (--use_vae, ngf 64, z_dim 256), for every dataset and generator
CAM_PARAMS = (128 * 64 * 9 + 64) + (128 * 64 + 64) + (64 * 64 + 64)


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_counts_match_the_official_models_for_every_variant(preset):
    semantic_nc, g_b6, g_b1, d = OFFICIAL[preset]
    expected = {
        "B1": g_b1, "B2": g_b1 + SAM_PARAMS, "B3": g_b1 + CAM_PARAMS, "B4": g_b1 + CAM_PARAMS,
        "B5": g_b6, "B6": g_b6,
    }
    assert g_b6 - g_b1 == SAM_PARAMS + CAM_PARAMS
    for variant in VARIANTS:
        info = describe(preset, variant)
        assert (info["semantic_nc"], info["generator_params"], info["discriminator_params"]) == (
            semantic_nc, expected[variant], d), variant


def test_describe_json_cli(capsys):
    assert main(["describe", "--preset", "cityscapes", "--variant", "B1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["generator_params"] == 93_048_003
    assert info["discriminator_params"] == 5_601_410
    assert (info["semantic_nc"], info["variant"], info["preset"]) == (36, "B1", "cityscapes")
    assert info["num_upsampling_layers"] == "more" and info["image_size"] == [512, 256]


def test_describe_table_and_ngf_override(capsys):
    assert main(["describe", "--preset", "synthetic", "--ngf", "8"]) == 0
    out = capsys.readouterr().out
    assert "generator_params" in out and "ngf                    8" in out


# CC-FPSE (official code, ngf = ndf = 64), measured from it: generator without the style encoder
# (label-map start, no --use_vae), generator with --use_vae (latent start; the encoder counted apart), FPSE D.
CCFPSE_OFFICIAL = {
    "cityscapes": (119_966_979, 128_055_555, 5_175_873),
    "ade20k": (125_254_211, 140_704_323, 5_190_593),
    "coco_stuff": (126_793_859, 141_939_843, 5_194_817),
}


@pytest.mark.parametrize("preset", sorted(CCFPSE_OFFICIAL))
def test_ccfpse_counts_match_the_official_models(preset, capsys):
    generator, generator_with_latent, discriminator = CCFPSE_OFFICIAL[preset]
    info = describe(preset, settings=["model.generator=ccfpse", "model.discriminator=fpse"])
    assert (info["generator_params"], info["discriminator_params"]) == (generator, discriminator)
    assert (info["generator"], info["discriminator"]) == ("ccfpse", "fpse")
    assert (info["style"], info["z_dim"], info["encoder_params"]) == ("off", None, 0)
    assert "variant" not in info and "use_sam" not in info  # DAGAN's knobs do not apply
    # the official --use_vae: a linear start from z (256) and SPADE's style encoder, through the CLI
    assert main(["describe", "--preset", preset, "-S", "model.generator=ccfpse", "-S", "model.discriminator=fpse",
                 "-S", "model.style=vae", "--json"]) == 0
    vae = json.loads(capsys.readouterr().out)
    assert (vae["generator_params"], vae["encoder_params"], vae["discriminator_params"]) == (
        generator_with_latent, OFFICIAL_ENCODER, discriminator)
    assert (vae["generator"], vae["style"], vae["z_dim"]) == ("ccfpse", "vae", 256)


def test_generator_and_discriminator_are_independent_choices(capsys):
    assert main(["describe", "--preset", "cityscapes", "-S", "model.discriminator=fpse", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["generator_params"], info["discriminator_params"]) == (93_134_229, 5_175_873)
    assert main(["describe", "--preset", "cityscapes", "-S", "model.generator=ccfpse", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["generator_params"], info["discriminator_params"]) == (119_966_979, 5_601_410)
    assert main(["describe", "--preset", "cityscapes", "-S", "model.generator=gaugan"]) == 2
    assert "'gaugan' is not one of: dagan, ccfpse, ca2sis" in capsys.readouterr().err


# With SPADE's style encoder (model.style=vae), measured from the official code with --use_vae:
# preset: (G B6, G B1) without the encoder; the encoder has 10,463,424 parameters for every dataset.
OFFICIAL_VAE = {
    "cityscapes": (101_222_805, 101_136_579),
    "ade20k": (112_028_821, 111_942_595),
    "coco_stuff": (112_713_109, 112_626_883),
}


@pytest.mark.parametrize("preset", sorted(OFFICIAL_VAE))
def test_vae_counts_match_the_official_models(preset, capsys):
    for variant, expected in zip(("B6", "B1"), OFFICIAL_VAE[preset], strict=True):
        assert main(["describe", "--preset", preset, "--variant", variant, "-S", "model.style=vae", "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (info["generator_params"], info["encoder_params"]) == (expected, OFFICIAL_ENCODER), variant
        assert (info["style"], info["z_dim"], info["discriminator_params"]) == ("vae", 256, OFFICIAL[preset][3])


@pytest.mark.parametrize("preset", ["celebamask_hq", "facades"])
def test_the_encoder_does_not_depend_on_the_dataset(preset):
    assert describe(preset, "B6", settings=["model.style=vae"])["encoder_params"] == OFFICIAL_ENCODER


def test_describe_takes_overrides_like_every_command(capsys):
    off = describe("synthetic", "B6")
    assert (off["style"], off["z_dim"], off["encoder_params"]) == ("off", None, 0)
    noise = describe("synthetic", "B6", settings=["model.style=noise3d", "model.z_dim=16"])
    # fc (-> 16 ngf = 256) and every SPADE's shared conv (-> 128) take z_dim = 16 more input channels, 3x3
    spades = 3 * 2 + 4 * 3  # head_0, G_middle_0/1: 2 SPADEs each; up_0..up_3: 3 each (learned shortcut)
    assert noise["generator_params"] - off["generator_params"] == 16 * 9 * (256 + spades * 128)
    assert main(["describe", "--preset", "synthetic", "-S", "model.style=vae", "-S", "model.ngf=8", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["ngf"], info["style"], info["z_dim"]) == (8, "vae", 256) and info["encoder_params"] > 0
    assert main(["describe", "--preset", "synthetic", "-S", "model.stlye=vae"]) == 2
    assert "unknown key(s) stlye" in capsys.readouterr().err
