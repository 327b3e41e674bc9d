"""The resume rules key by key (docs/RELIABILITY.md, "Resume rules"; dagan/train/resume.py).

Each list below is written out here, independently of the code's: a key dropped from the code's must-match list
fails its case, and a config key added without a decision fails the completeness test. The end-to-end refusal
through ``python -m components.train`` is tests/test_train_guards.py::test_a_changed_config_is_not_resumed_...
"""

from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import tiny_config

from dagan.checkpoint import CheckpointError
from dagan.config import Config
from dagan.train.resume import resume_changes

REPO = Path(__file__).resolve().parents[1]
MUST_MATCH = {
    "model": ("generator", "discriminator", "variant", "use_sam", "cam", "sam_kernel_size", "cam_sources", "ngf",
              "ndf", "num_upsampling_layers", "num_discriminators", "n_layers_d", "init_gain",
              "init_spectral_norm_weights", "spap", "spap_order", "ca2sis_style_dim", "ca2sis_exclude_background",
              "ca2sis_mapping_network", "style", "z_dim"),
    "loss": ("lambda_gan", "lambda_feat", "lambda_vgg", "lambda_att", "lambda_kld", "vgg_input"),
    "dataset": ("name", "load_size", "crop_size", "aspect_ratio", "flip"),
    "train": ("batch_size", "lr_schedule", "lr_g", "lr_d", "beta1", "beta2", "seed", "amp", "ema_decay",
              "ema_rampup"),
}
MAY_CHANGE = {"train": ("max_steps", "epochs", "epochs_decay")}
FREE = {
    "dataset": ("raw_dir", "prepared_dir", "num_workers", "rows_per_shard", "max_classes"),
    "synthetic": ("seed", "num_train", "num_val", "size"),
    "loss": ("vgg_weights",),
    "train": ("device", "channels_last", "heap_reuse", "init_from", "ema_bn_batches", "out_dir", "checkpoint_every",
              "keep_last", "log_every", "sample_every"),
    "judge": ("width", "levels", "epochs", "batch_size", "lr", "seed", "device", "pretrained", "pretrained_label_map",
              "pretrained_input", "out_dir"),
    "evaluate": ("checkpoint", "use_ema", "judge", "split", "batch_size", "device", "num_grid_samples",
                 "num_attention_samples", "style_from", "num_style_samples", "style_latent", "fid", "fid_weights",
                 "lpips", "download_weights", "out_dir"),
}
OTHER = "<another value>"  # what the checkpoint's run had: any value unlike the config's


def _keys(groups: dict[str, tuple[str, ...]]) -> list[str]:
    return [f"{section}.{name}" for section, names in groups.items() for name in names]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Config:
    root = tmp_path_factory.mktemp("resume")
    return tiny_config(root / "prepared", root / "out")


def _saved_with(config: Config, key: str) -> dict:
    section, name = key.split(".")
    saved = config.to_dict()
    saved[section][name] = OTHER
    return saved


@pytest.mark.parametrize("key", _keys(MUST_MATCH))
def test_a_must_match_key_that_differs_is_refused_naming_it(config, key):
    with pytest.raises(CheckpointError) as err:
        resume_changes(_saved_with(config, key), config, Path("step-00000002.pt"))
    assert f"{key}: {OTHER!r} -> " in str(err.value)
    assert "another train.out_dir" in str(err.value) and "--force-new-run" in str(err.value)


@pytest.mark.parametrize("key", _keys(MAY_CHANGE))
def test_a_schedule_key_may_change_and_the_change_is_reported(config, key):
    changes = resume_changes(_saved_with(config, key), config, Path("step-00000002.pt"))
    assert len(changes) == 1 and changes[0].startswith(f"{key}: {OTHER!r} -> ")


@pytest.mark.parametrize("key", ["train.log_every", "train.device", "dataset.num_workers", "evaluate.batch_size"])
def test_a_free_key_may_change_silently(config, key):
    assert resume_changes(_saved_with(config, key), config, Path("step-00000002.pt")) == ()


def test_every_config_key_has_a_resume_rule():
    classified = _keys(MUST_MATCH) + _keys(MAY_CHANGE) + _keys(FREE)
    assert len(classified) == len(set(classified))
    every = [f"{section}.{name}" for section, values in Config().to_dict().items() for name in values]
    assert sorted(classified) == sorted(every), "a config key was added or removed: decide its resume rule"


def test_the_documented_rule_names_every_must_match_and_schedule_key():
    text = (REPO / "docs" / "RELIABILITY.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| **Resume rules.**"))
    for key in _keys(MUST_MATCH) + _keys(MAY_CHANGE):
        section, name = key.split(".")
        assert f"`{name}`" in row or f"`{key}`" in row or f"all of `{section}`" in row, key

