"""Reference folders (docs/OFFICIAL.md, "Proof of equivalence"): the format is checked before anything runs, every
lack is one line naming it; the tolerances after training come from the spread a folder stores; the maker's inputs
and checks. Nothing here runs a model: these tests take about a second each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dagan.__main__ import main as dagan_main
from dagan.official.maker import MakerError, check_checkout, check_size, make_reference, reference_inputs
from dagan.official.reference import ITERATIONS, LOSS_NAMES, OUTPUT_ARRAYS, family_of, load_reference, save_arrays
from dagan.official.results import merge_results, render_table, results_entries
from dagan.official.verify import FIXED, FORMAT1_AFTER_UPDATES, SPREAD_FACTOR, SPREAD_FLOORS, compare, tolerance
from dagan.presets import get_preset

ROOT = Path(__file__).resolve().parents[1] / "references" / "official"
REFERENCES = sorted(path for path in ROOT.iterdir() if path.is_dir())
SMALLEST = min(REFERENCES, key=lambda path: (path / "reference.npz").stat().st_size)


def _copy(tmp_path: Path, folder: Path = SMALLEST) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    return copy


def _edit_json(folder: Path, edit) -> None:
    meta = json.loads((folder / "reference.json").read_text())
    edit(meta)
    (folder / "reference.json").write_text(json.dumps(meta))


def _verify_error(folder: Path, capsys) -> str:
    code = dagan_main(["verify-official", str(folder)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err and "all within tolerance" not in captured.err and captured.out == ""
    (line,) = captured.err.strip().splitlines()
    return line


def test_a_folder_missing_an_array_or_with_a_misshapen_one_is_one_line_naming_it_and_the_folder(tmp_path, capsys):
    folder = _copy(tmp_path)
    with np.load(folder / "reference.npz") as archive:
        arrays = {name: archive[name] for name in archive.files if name != "g_eval_after_2_iterations"}
    save_arrays(folder / "reference.npz", arrays)
    line = _verify_error(folder, capsys)
    assert "g_eval_after_2_iterations" in line and str(folder) in line
    save_arrays(folder / "reference.npz", {**arrays, "g_eval_after_2_iterations": arrays["g_eval"][:, :, :8]})
    line = _verify_error(folder, capsys)
    assert "g_eval_after_2_iterations has shape (1, 3, 8, " in line and str(folder) in line


@pytest.mark.parametrize(("edit", "named"), [
    (lambda meta: meta.update(losses_per_iteration=[]), f"{ITERATIONS} iterations expected, found 0"),
    (lambda meta: meta.pop("losses_per_iteration"), "losses_per_iteration"),
    (lambda meta: meta["losses_per_iteration"].pop(), f"{ITERATIONS} iterations expected, found 1"),
    (lambda meta: meta["losses_per_iteration"][1].pop("D_real"), "iteration 2 lacks the loss(es) D_real"),
    (lambda meta: meta["losses_per_iteration"][0].update(GAN="0.1"), "iteration 1 lacks the loss(es) GAN"),
    (lambda meta: meta.pop("seed"), "lacks seed (int)"),
    (lambda meta: meta.pop("generator_keys"), "lacks generator_keys (list)"),
    (lambda meta: meta.pop("spread"), "spread"),
    (lambda meta: meta["spread"][0]["arrays"].pop("g_train_after_2_iterations"), "g_train_after_2_iterations"),
    (lambda meta: meta["spread"][-1]["losses"].pop(), f"{ITERATIONS} iterations expected, found 1"),
    (lambda meta: meta.update(format=99), "format 99"),
], ids=["no losses", "no loss list", "truncated losses", "a loss missing", "a loss not a number", "no seed",
        "no generator layout", "format 2 without spread", "spread lacks an array", "spread lacks an iteration",
        "a newer format"])
def test_a_folder_that_lacks_what_its_format_requires_fails_naming_it(tmp_path, capsys, edit, named):
    folder = _copy(tmp_path)
    _edit_json(folder, edit)
    line = _verify_error(folder, capsys)
    assert named in line and str(folder) in line, line


def test_unreadable_files_are_one_line(tmp_path, capsys):
    folder = _copy(tmp_path)
    (folder / "reference.json").write_text("{not json")
    assert "is not readable JSON" in _verify_error(folder, capsys)
    folder = _copy(tmp_path / "second")
    (folder / "reference.npz").write_bytes(b"PK\x03\x04 truncated")
    assert "is not a readable numpy archive" in _verify_error(folder, capsys)


def test_several_folders_are_all_checked_before_any_runs(tmp_path, capsys):
    broken = _copy(tmp_path)
    _edit_json(broken, lambda meta: meta.pop("seed"))
    code = dagan_main(["verify-official", str(SMALLEST), str(broken)])
    captured = capsys.readouterr()
    assert code == 2 and "lacks seed" in captured.err and "generator:" not in captured.err and captured.out == ""


@pytest.mark.parametrize("folder", REFERENCES, ids=[path.name for path in REFERENCES])
def test_every_shipped_folder_is_format_2_with_the_spread_of_three_other_roundings(folder):
    reference = load_reference(folder)
    assert reference.format == 2 and reference.meta["threads"] == 2
    runs = {(run["threads"], run["mkldnn"], run["float64"]) for run in reference.meta["spread"]}
    assert runs == {(1, True, False), (2, False, False), (2, True, True)}
    assert reference.spread("g_eval_after_2_iterations_pre_tanh") > 0  # rounding moves two GAN iterations


def test_after_training_tolerances_are_the_spread_times_the_factor_with_a_floor(tmp_path):
    folder = _copy(tmp_path)
    reference = load_reference(folder)
    after_updates = [name for name in OUTPUT_ARRAYS if "after" in name] + ["iteration1/D_Fake", "iteration1/D_real"] \
        + [f"iteration{ITERATIONS}/{name}" for name in LOSS_NAMES]
    for name in after_updates:
        expected = max(SPREAD_FLOORS[family_of(name)], SPREAD_FACTOR * reference.spread(name))
        assert tolerance(name, reference).absolute == pytest.approx(expected) and tolerance(name, reference).relative \
            is None, name
    before_any_update = ["g_train", "g_eval_pre_tanh", "d_eval_scale1_final", "iteration1/VGG", "iteration1/GAN"]
    for name in before_any_update:
        assert tolerance(name, reference) in FIXED.values(), name
    _edit_json(folder, lambda meta: [run["arrays"].update({name: 0.0 for name in run["arrays"]})
                                     for run in meta["spread"]])
    zero = load_reference(folder)
    assert tolerance("g_eval_after_2_iterations", zero).absolute == SPREAD_FLOORS["g_eval_after_2_iterations"]


def test_an_old_folder_without_a_spread_keeps_the_fixed_tolerances(tmp_path):
    folder = _copy(tmp_path)
    _edit_json(folder, lambda meta: [meta.pop(key) for key in ("format", "spread")])
    old = load_reference(folder)
    assert old.format == 1 and old.spread("g_eval_after_2_iterations") is None
    assert tolerance("g_eval_after_2_iterations_pre_tanh", old).absolute == 4e-2
    assert tolerance("g_train_after_2_iterations", old).absolute == 0.5
    assert tolerance("iteration2/GAN", old) == FORMAT1_AFTER_UPDATES["iteration2"]
    first = tolerance("iteration1/D_Fake", old)  # format 1: every first-iteration loss as before
    assert (first.absolute, first.relative) == (FIXED["iteration1_g"].absolute, FIXED["iteration1_g"].relative)
    assert tolerance("iteration2/GAN", old).accepts(0.009, 0.1) and not tolerance("iteration2/GAN", old).accepts(
        0.011, 0.1)


@pytest.mark.parametrize("folder", REFERENCES, ids=[path.name for path in REFERENCES])
def test_the_maker_makes_the_inputs_of_every_shipped_folder(folder):
    reference = load_reference(folder)
    meta, preset = reference.meta, get_preset(reference.meta["preset"])
    inputs = reference_inputs(meta["seed"], meta["height"], meta["width"], preset.num_classes,
                              preset.contain_dontcare_label)
    for name, array in inputs.items():
        assert array.dtype == reference.arrays[name].dtype and np.array_equal(array, reference.arrays[name]), name


def test_the_maker_refuses_what_the_official_code_cannot_run_in_one_line(tmp_path):
    with pytest.raises(MakerError, match="multiple of 32"):
        check_size("facades", 48, 48)
    with pytest.raises(MakerError, match="cityscapes .* multiple of 64"):
        check_size("cityscapes", 64, 32)  # the official start height round(1 / 2) = 0
    check_size("cityscapes", 128, 64)
    check_size("ade20k", 64, 64)
    checkout = tmp_path / "DAGAN_v1"
    for name in ("options/train_options.py", "models/pix2pix_model.py", "trainers/pix2pix_trainer.py"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).touch()
    with pytest.raises(MakerError, match="sync_batchnorm/__init__.py missing .*Synchronized-BatchNorm-PyTorch"):
        check_checkout(checkout)
    with pytest.raises(MakerError, match="pix2pix_model.py.* missing .*folder that holds train.py"):
        check_checkout(tmp_path)
    (checkout / "models/networks/sync_batchnorm").mkdir(parents=True)
    (checkout / "models/networks/sync_batchnorm/__init__.py").touch()
    existing = _copy(tmp_path)
    with pytest.raises(MakerError, match="exists; a reference folder is never replaced"):
        make_reference(checkout, "facades", 1, 64, 64, "test", existing)


def _report_of_the_official_outputs_themselves(folder: Path) -> dict:
    """A real verify-official report of ``folder`` without running a model: our outputs = the official ones."""
    reference = load_reference(folder)
    return compare(reference, {name: reference.arrays[name] for name in OUTPUT_ARRAYS},
                   reference.meta["losses_per_iteration"])


def test_the_results_file_keeps_other_folders_and_replaces_a_re_verified_one(tmp_path, capsys):
    results = tmp_path / "verify-results.json"
    first, second = REFERENCES[0], REFERENCES[1]
    for folder, load in ((first, 1.0), (second, 2.0), (first, 3.0)):
        report = _report_of_the_official_outputs_themselves(folder)
        assert report["ok"] and not report["not_compared"]
        merge_results(results, results_entries([report], [1.5], ["verify-official", str(folder)], load))
    entries = json.loads(results.read_text())["references"]
    assert [entry["folder"] for entry in entries] == [first.name, second.name]
    assert [entry["verified"]["load_average_before"] for entry in entries] == [3.0, 2.0]
    beside = tmp_path / "beside"
    beside.mkdir()
    _copy(beside, second)
    moved = beside / "verify-results.json"
    results.rename(moved)
    merge_results(moved, results_entries([_report_of_the_official_outputs_themselves(second)], [1.0], ["v"], 4.0))
    assert [entry["folder"] for entry in json.loads(moved.read_text())["references"]] == [second.name]  # first: gone
    table = render_table({"references": entries})
    assert f"`{first.name}`" in table and "2 runs of `python -m dagan verify-official" in table
    results.write_text("{}")
    code = dagan_main(["verify-official", str(first), "--results", str(results)])
    captured = capsys.readouterr()
    assert code == 2 and "is not a results file of verify-official" in captured.err and "generator:" not in \
        captured.err and results.read_text() == "{}"
