"""The model IS the official DAGAN / SPADE: layouts, importer/exporter and the reference outputs.

The reference folders in references/official/ hold outputs of the official code for rule weights
(docs/OFFICIAL.md). Tolerances (dagan/official/verify.py, docs/OFFICIAL.md "Tolerances"): generator
outputs before training 5e-5 (train mode) / 1e-5 (eval mode); discriminator 1e-5; first-iteration
losses 1e-5 absolute or 1e-4 relative; after two iterations max(floor, k x the official code's own
spread over float orders, stored in each folder).

Running our model through two training iterations takes 10-60 s per folder, so the checks that do
(``verify-official`` itself and the feature-matching deviation) run on CI_SUBSET in ``make test`` and
on every folder with ``DAGAN_OFFICIAL_ALL=1 .venv/bin/python -m pytest tests/test_official.py``
(docs/OFFICIAL.md, "Which folders make test verifies").
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dagan.nn.attention as attention
import dagan.train.steps as steps
from dagan.__main__ import main as dagan_main
from dagan.checkpoint import load_checkpoint, load_generator
from dagan.discriminator import build_discriminator
from dagan.generator import build_generator
from dagan.official.convert import official_config, official_state_dicts
from dagan.official.layout import key_map
from dagan.official.reference import G_LOSSES, OUTPUT_ARRAYS, Reference, family_of, load_reference
from dagan.official.results import render_table, table_in
from dagan.official.verify import FIXED, compare, run_reference, tolerance

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = sorted(path for path in (ROOT / "references" / "official").iterdir() if path.is_dir())
IDS = [path.name for path in REFERENCES]
RESULTS = ROOT / "references" / "official" / "verify-results.json"
# Verified in make test: both official codes, every kind of semantic input (instance edges, don't care, plain
# labels) and the Facades case of the spread-based tolerances (docs/OFFICIAL.md, "Which folders make test verifies").
CI_SUBSET = ("spade-cityscapes-2", "dagan-coco_stuff-15", "dagan-facades-7")
# Folders that verify-official reports outside a spread-derived tolerance (docs/OFFICIAL.md, "Open cases").
OPEN_CASES = {"dagan-deepfashion-20"}
EVERY_FOLDER = os.environ.get("DAGAN_OFFICIAL_ALL") == "1"
VERIFIED = REFERENCES if EVERY_FOLDER else [path for path in REFERENCES if path.name in CI_SUBSET]
DEVIATION_FOLDERS = REFERENCES if EVERY_FOLDER else [path for path in REFERENCES if path.name == CI_SUBSET[0]]


def reference_named(name: str):
    return load_reference(ROOT / "references" / "official" / name)


def _models(reference, ngf=None):
    config = official_config(reference.meta["preset"], reference.variant, ngf or reference.meta["ngf"],
                             {"model": {"num_upsampling_layers": reference.meta["num_upsampling_layers"]}})
    with torch.device("meta"):
        return build_generator(config, reference.semantic_nc), build_discriminator(config, reference.semantic_nc)


@pytest.mark.parametrize("folder", REFERENCES, ids=IDS)
def test_our_models_have_the_official_layouts_key_for_key_in_order(folder):
    reference = load_reference(folder)
    generator, discriminator = _models(reference)
    for module, role in ((generator, "generator"), (discriminator, "discriminator")):
        ours = [[pair.official, list(pair.shape)] for pair in key_map(module, role)]
        assert ours == reference.meta[f"{role}_keys"], role


def test_the_ci_subset_names_shipped_folders():
    assert set(CI_SUBSET) <= set(IDS)


@pytest.mark.parametrize("folder", VERIFIED, ids=[
    f"{path.name} [G 5e-5 train / 1e-5 eval, D 1e-5, losses 1e-4 rel, after 2 iterations from the spread]"
    for path in VERIFIED])
def test_verify_official_reproduces_the_official_outputs(folder, capsys):
    code = dagan_main(["verify-official", str(folder)])
    report = json.loads(capsys.readouterr().out)
    failed = {name: item for section in ("arrays", "losses") for name, item in report[section].items()
              if not item["ok"]}
    assert code == 0 and report["ok"] and not failed and not report["not_compared"], failed
    assert set(report["arrays"]) == set(OUTPUT_ARRAYS) and report["format"] == 2
    assert report["arrays"]["d_eval_scale0_final"]["max_abs"] <= 1e-5
    assert len(report["losses"]) == 10


@pytest.mark.parametrize(("role", "first", "second", "wrong"), [
    ("generator", "head_0.conv_0.weight_orig", "head_0.conv_1.weight_orig", "g_eval_pre_tanh"),
    ("discriminator", "discriminator_0.model2.0.0.weight_orig", "discriminator_1.model2.0.0.weight_orig",
     "d_eval_scale0_final"),
])
def test_one_permuted_key_fails_verification(role, first, second, wrong, monkeypatch):
    original = Reference.official_state

    def permuted(self, name):
        state = original(self, name)
        if name == role:
            state[first], state[second] = state[second], state[first]
        return state

    monkeypatch.setattr(Reference, "official_state", permuted)
    reference = reference_named("dagan-cityscapes-1")
    outputs, losses = run_reference(reference, stages=("generator", "discriminator"))
    report = compare(reference, outputs, losses)
    assert not report["ok"] and report["not_compared"]  # the training stage was not run either
    assert not report["arrays"][wrong]["ok"]
    assert report["arrays"][wrong]["max_abs"] > 100 * tolerance(wrong, reference).absolute


def _sam_without_sigmoid(self, feature):
    pooled_avg = attention.mean(feature, (1,))
    pooled_max = feature.amax(dim=1, keepdim=True)
    attention_map = self.conv(torch.cat([pooled_avg, pooled_max], dim=1))  # the deviation: no sigmoid
    return attention_map * feature, attention_map


def _cam_max_pooled(self, feature, sources):
    fused = self.fused_sources(sources, feature.shape[2:])
    alpha = torch.cat([fused.amax((2, 3), keepdim=True), feature.amax((2, 3), keepdim=True)], dim=1)  # the deviation
    delta = torch.sigmoid(self.expand(F.relu(self.reduce(alpha))))
    if self.mode == "I":
        return delta * fused + feature, delta
    return delta * feature + fused, delta


DAGAN_FOLDERS = [path for path in (REFERENCES if EVERY_FOLDER else VERIFIED) if load_reference(path).code == "DAGAN"]


@pytest.mark.parametrize("folder", DAGAN_FOLDERS, ids=[path.name for path in DAGAN_FOLDERS])
@pytest.mark.parametrize(("module", "deviation"), [(attention.SpatialAttention, _sam_without_sigmoid),
                                                   (attention.ChannelAttention, _cam_max_pooled)],
                         ids=["SAM without its sigmoid", "CAM max-pooled"])
def test_a_one_line_deviation_in_an_attention_module_fails_verification(folder, module, deviation, monkeypatch):
    reference = load_reference(folder)
    monkeypatch.setattr(module, "forward", deviation)
    outputs, losses = run_reference(reference, stages=("generator",))
    report = compare(reference, outputs, losses)
    assert not report["ok"]
    for name in ("g_train_pre_tanh", "g_eval_pre_tanh"):  # far outside, before any training step
        assert report["arrays"][name]["max_abs"] > 10 * report["arrays"][name]["tolerance"], name


@pytest.mark.parametrize("folder", DEVIATION_FOLDERS, ids=[path.name for path in DEVIATION_FOLDERS])
def test_the_feature_matching_weight_halved_in_the_update_fails_verification_after_it(folder, monkeypatch):
    """G's update uses lambda_feat / 2 while the losses are reported with the official lambda, so nothing before the
    first update shows it: only the tolerances derived from the official spread can catch it, and they do."""
    official_total = steps._weighted_total

    def halved(losses, weights):
        return official_total(losses, dataclasses.replace(weights, feat=weights.feat / 2))  # the deviation

    monkeypatch.setattr(steps, "_weighted_total", halved)
    reference = load_reference(folder)
    outputs, losses = run_reference(reference, stages=("training",))
    report = compare(reference, outputs, losses)
    compared = {**report["arrays"], **report["losses"]}
    assert all(compared[f"iteration1/{name}"]["ok"] for name in G_LOSSES)  # before the first update: no difference
    failed = sorted(name for name, item in compared.items() if not item["ok"])
    assert failed and not report["ok"], compared
    assert all(family_of(name) not in FIXED for name in failed)


def _official_files(tmp_path: Path, reference, with_discriminator=True):
    files = {"generator": tmp_path / "latest_net_G.pth"}
    torch.save(reference.official_state("generator"), files["generator"])
    if with_discriminator:
        files["discriminator"] = tmp_path / "latest_net_D.pth"
        torch.save(reference.official_state("discriminator"), files["discriminator"])
    return files


# The round trip writes and reads ~400 MB per folder: run on both codes and both kinds of label input (instance
# edges; don't care); test_our_models_have_the_official_layouts_key_for_key_in_order covers every folder's layout.
ROUND_TRIP = [path for path in REFERENCES
              if path.name in ("dagan-cityscapes-1", "spade-cityscapes-2", "dagan-ade20k-3")]


@pytest.mark.parametrize("folder", ROUND_TRIP, ids=[path.name for path in ROUND_TRIP])
def test_import_then_export_gives_the_official_files_back_key_for_key(folder, tmp_path):
    reference = load_reference(folder)
    files = _official_files(tmp_path, reference)
    imported = tmp_path / "imported.pt"
    assert dagan_main(["import-official", "--generator", str(files["generator"]), "--discriminator",
                       str(files["discriminator"]), "--preset", reference.meta["preset"], "--out", str(imported)]) == 0
    checkpoint = load_checkpoint(imported)
    assert checkpoint["origin"]["code"] == reference.code and checkpoint["config"]["model"]["variant"] == \
        reference.variant
    assert dagan_main(["export-official", "--checkpoint", str(imported), "--out", str(tmp_path / "export")]) == 0
    for role, name in (("generator", "latest_net_G.pth"), ("discriminator", "latest_net_D.pth")):
        original = torch.load(files[role], weights_only=True)
        exported = torch.load(tmp_path / "export" / name, weights_only=True)
        assert list(exported) == list(original), role
        assert all(torch.equal(exported[key], original[key]) for key in original), role


def test_import_refuses_another_preset_naming_the_first_mismatching_key(tmp_path, capsys):
    reference = reference_named("dagan-cityscapes-1")  # 36 input channels
    files = _official_files(tmp_path, reference, with_discriminator=False)
    code = dagan_main(["import-official", "--generator", str(files["generator"]), "--preset", "ade20k",
                       "--out", str(tmp_path / "x.pt")])
    error = capsys.readouterr().err
    assert code == 2 and "fc.weight" in error and "[1024, 36, 3, 3]" in error and "[1024, 151, 3, 3]" in error
    assert not (tmp_path / "x.pt").exists() and "Traceback" not in error


def test_import_refuses_the_wrong_variant_naming_the_key(tmp_path, capsys):
    dagan = reference_named("dagan-cityscapes-1")
    files = _official_files(tmp_path, dagan, with_discriminator=False)
    code = dagan_main(["import-official", "--generator", str(files["generator"]), "--preset", "cityscapes",
                       "--variant", "B1", "--out", str(tmp_path / "x.pt")])
    assert code == 2 and "conv_64.weight" in capsys.readouterr().err


def test_import_refuses_a_file_that_is_no_state_dict_without_advising_unsafe_loading(tmp_path, capsys):
    not_a_checkpoint = tmp_path / "latest_net_G.pth"
    not_a_checkpoint.write_bytes(b"\x80\x04\x95 definitely not a checkpoint")
    code = dagan_main(["import-official", "--generator", str(not_a_checkpoint), "--preset", "cityscapes",
                       "--out", str(tmp_path / "x.pt")])
    error = capsys.readouterr().err
    assert code == 2 and "not a readable PyTorch state dict" in error and "weights_only=False" not in error


def test_export_refuses_a_model_the_official_code_cannot_run(tmp_path, capsys):
    config = official_config("cityscapes", "B6", ngf=16)
    checkpoint = {"config": config.to_dict(), "semantic_nc": 36, "generator": {}, "ema": None}
    with pytest.raises(ValueError, match="hard-codes 64"):
        official_state_dicts(checkpoint)
    for style in ("off", "vae"):  # CC-FPSE, with or without the style encoder that DAGAN's export writes
        ccfpse = official_config("cityscapes", "B1", overrides={"model": {"generator": "ccfpse", "style": style}})
        with pytest.raises(ValueError, match="model.generator=ccfpse.*only DAGAN / SPADE models"):
            official_state_dicts({"config": ccfpse.to_dict(), "semantic_nc": 36, "generator": {}, "ema": None})
    for spap in ("generator", "discriminator"):
        with_spap = official_config("cityscapes", "B1", ngf=4, overrides={"model": {"spap": spap}})
        with pytest.raises(ValueError, match=f"model.spap={spap}: the official DAGAN/SPADE code has no SPAP"):
            official_state_dicts({"config": with_spap.to_dict(), "semantic_nc": 36, "generator": {}, "ema": None})


def test_an_imported_official_model_generates_from_label_pngs(tmp_path):
    reference = reference_named("spade-cityscapes-2")
    files = _official_files(tmp_path, reference, with_discriminator=False)
    imported = tmp_path / "imported.pt"
    assert dagan_main(["import-official", "--generator", str(files["generator"]), "--preset", "cityscapes",
                       "--out", str(imported)]) == 0
    for folder, array in (("labels", reference.arrays["label"]), ("instances", reference.arrays["instance"])):
        (tmp_path / folder).mkdir()
        Image.fromarray(array.astype(np.uint16)).save(tmp_path / folder / "scene.png")
    assert dagan_main(["generate", "--model", str(imported), "--labels", str(tmp_path / "labels"), "--instances",
                       str(tmp_path / "instances"), "--out", str(tmp_path / "out")]) == 0
    generated = np.asarray(Image.open(tmp_path / "out" / "scene.png"))
    generator, _, _ = load_generator(imported)
    with torch.no_grad():
        image = generator(reference.semantic())[0]
    expected = ((image.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert generated.shape == (128, 256, 3) and np.abs(generated - expected).max() <= 1


def _vae_checkpoint(z_dim: int = 16) -> dict:
    """A project checkpoint of a SPADE (B1) Cityscapes model with the style encoder at ngf 4."""
    config = official_config("cityscapes", "B1", 4, {"model": {"style": "vae", "z_dim": z_dim}})
    torch.manual_seed(0)
    generator = build_generator(config, 36)
    return {"config": config.to_dict(), "semantic_nc": 36, "generator": generator.state_dict(), "ema": None}


def test_a_vae_model_exports_its_encoder_as_net_e_and_imports_it_back(tmp_path, capsys):
    from test_multimodal import OFFICIAL_ENCODER_KEYS

    checkpoint = _vae_checkpoint()
    states = official_state_dicts(checkpoint)
    assert list(states["encoder"]) == OFFICIAL_ENCODER_KEYS  # the official ConvEncoder's keys, in its order
    assert not any(key.startswith("encoder") for key in states["generator"])
    assert states["generator"]["fc.weight"].shape == (16 * 4 * 4 * 8, 16)  # linear z -> 16 ngf x 4 x 8
    official = tmp_path / "official"
    official.mkdir()
    for role, name in (("generator", "latest_net_G.pth"), ("encoder", "latest_net_E.pth")):
        torch.save(states[role], official / name)
    imported = tmp_path / "imported.pt"
    assert dagan_main(["import-official", "--generator", str(official / "latest_net_G.pth"), "--preset",
                       "cityscapes", "--out", str(imported)]) == 0  # the encoder is found beside the generator
    assert "with its style encoder" in capsys.readouterr().out
    state = load_checkpoint(imported)
    assert (state["config"]["model"]["style"], state["config"]["model"]["z_dim"]) == ("vae", 16)
    assert state["origin"]["files"]["encoder"]["name"] == "latest_net_E.pth"
    assert list(state["generator"]) == list(checkpoint["generator"])
    assert all(torch.equal(state["generator"][k], v) for k, v in checkpoint["generator"].items())
    assert dagan_main(["export-official", "--checkpoint", str(imported), "--out", str(tmp_path / "export")]) == 0
    exported = torch.load(tmp_path / "export" / "latest_net_E.pth", weights_only=True)
    assert list(exported) == OFFICIAL_ENCODER_KEYS
    assert all(torch.equal(exported[key], states["encoder"][key]) for key in OFFICIAL_ENCODER_KEYS)


def test_import_asks_for_the_encoder_of_a_vae_generator_and_refuses_one_without(tmp_path, capsys):
    states = official_state_dicts(_vae_checkpoint())
    torch.save(states["generator"], tmp_path / "latest_net_G.pth")
    code = dagan_main(["import-official", "--generator", str(tmp_path / "latest_net_G.pth"), "--preset",
                       "cityscapes", "--out", str(tmp_path / "x.pt")])
    assert code == 2 and "pass --encoder latest_net_E.pth" in capsys.readouterr().err
    broken = dict(states["encoder"])
    broken["layer6.0.weight_orig"] = broken.pop("layer6.0.weight_orig")[:, :8]
    torch.save(broken, tmp_path / "broken_E.pth")
    code = dagan_main(["import-official", "--generator", str(tmp_path / "latest_net_G.pth"), "--encoder",
                       str(tmp_path / "broken_E.pth"), "--preset", "cityscapes", "--out", str(tmp_path / "x.pt")])
    assert code == 2 and "layer6.0.weight_orig" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    plain = _official_files(tmp_path / "plain", reference_named("spade-cityscapes-2"), with_discriminator=False)
    code = dagan_main(["import-official", "--generator", str(plain["generator"]), "--encoder",
                       str(tmp_path / "broken_E.pth"), "--preset", "cityscapes", "--out", str(tmp_path / "x.pt")])
    assert code == 2 and "not a VAE generator" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_the_results_table_in_the_docs_is_the_one_the_results_file_gives():
    """docs/OFFICIAL.md's table of our difference against the official spread is generated from the file that
    ``verify-official references/official/*/ --results references/official/verify-results.json`` writes."""
    results = json.loads(RESULTS.read_text())
    assert table_in((ROOT / "docs" / "OFFICIAL.md").read_text()) == render_table(results)
    assert sorted(entry["folder"] for entry in results["references"]) == IDS  # every shipped folder, no other
    assert all(entry["format"] == 2 for entry in results["references"])
    assert {entry["folder"] for entry in results["references"] if not entry["ok"]} == OPEN_CASES
