"""The benchmark scripts' plumbing (bench/): modes, targets, the no-GPU skip, one tiny measured run.

No timings are asserted (speed targets live in bench/ and docs/PERFORMANCE.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is scripts at the repo root, not installed
from bench import common, gpu, train_step  # noqa: E402


def test_modes_parse_and_unknown_modes_are_refused():
    assert train_step.parse_mode("bf16-cl") == {"precision": "bf16", "channels_last": True, "compile": False}
    assert train_step.parse_mode("fp32-compile") == {"precision": "fp32", "channels_last": False, "compile": True}
    with pytest.raises(ValueError, match="unknown mode 'fp16'"):
        train_step.parse_mode("fp16")


def test_model_names_pick_generator_and_discriminator():
    assert common.model_settings("B6") == {"variant": "B6", "discriminator": "multiscale"}
    assert common.model_settings("ccfpse") == {"generator": "ccfpse", "discriminator": "fpse"}
    assert common.model_settings("B1/fpse") == {"variant": "B1", "discriminator": "fpse"}
    assert common.model_settings("ccfpse/multiscale") == {"generator": "ccfpse", "discriminator": "multiscale"}
    assert common.model_settings("B6+spap-both") == {"variant": "B6", "discriminator": "multiscale", "spap": "both"}
    assert common.model_settings("ca2sis") == {"generator": "ca2sis", "discriminator": "multiscale"}
    for bad in ("B7", "ccfpse/patch", "B6+spap-nowhere", "B6+sam", "custom"):
        with pytest.raises(ValueError, match="model"):
            common.model_settings(bad)


def test_summary_checks_the_attention_overhead_and_compares_other_models_with_b6():
    rows = [{"variant": "B1", "mode": "fp32", "allocator": "system", "iteration_s": {"median": 2.0}},
            {"variant": "B6", "mode": "fp32", "allocator": "system", "iteration_s": {"median": 2.05}}]
    summary = train_step.summarise(rows)["fp32/system"]
    assert summary["b6_over_b1"] == pytest.approx(1.025) and summary["attention_overhead_ok"] is True
    rows[1]["iteration_s"]["median"] = 2.1
    assert train_step.summarise(rows)["fp32/system"]["attention_overhead_ok"] is False  # 5% > 3%
    rows.append({"variant": "ccfpse", "mode": "fp32", "allocator": "system", "iteration_s": {"median": 6.3}})
    assert train_step.summarise(rows)["fp32/system"]["ccfpse_over_B6"] == pytest.approx(3.0)


def test_benchmarks_write_results_only_when_asked(tmp_path, capsys):
    assert common.write_results(None, {"rows": []}) is None
    assert "not written (--out PATH writes them)" in capsys.readouterr().out
    assert common.write_results(str(tmp_path / "r.json"), {"rows": []}) == tmp_path / "r.json"
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["rows"] == [] and set(written["ours"]) == {"folder", "commit", "modified"}  # the code's commit
    assert common.model_parser("", train_step.MODES, repeats=1).parse_args([]).out is None
    assert common.command_line("bench.train_step", ["--modes", "fp32", "bf16-cl"]) == \
        "python -m bench.train_step --modes fp32 bf16-cl"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_rows_are_skipped_with_the_reason_when_there_is_no_gpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--out", str(out)]) == 0
    assert json.loads(out.read_text())["skipped"].startswith("no CUDA device")
    assert gpu.main(["--require-gpu", "--out", str(tmp_path / "other.json")]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "other.json").exists()


@pytest.mark.parametrize("model", ["B6", "ccfpse"])
def test_one_tiny_training_iteration_is_measured(model):
    spec = {"variant": model, "mode": "fp32", **train_step.parse_mode("fp32"), "allocator": "system",
            "dataset": "synthetic", "height": 64, "width": 64, "batch": 2, "ngf": 8, "threads": 1,
            "warmup": 1, "repeats": 1, "device": "cpu"}
    threads = torch.get_num_threads()
    try:
        row = train_step.measure(spec)
    finally:
        torch.set_num_threads(threads)  # measure() sets the thread count of this (shared) process
    assert row["iteration_s"]["n"] == 1 and row["iteration_s"]["median"] > 0
    assert row["g_step_s"]["median"] + row["d_step_s"]["median"] == pytest.approx(row["iteration_s"]["median"])
    assert row["peak_memory_mib"] > 0 and row["generator_parameters"] > 0
    assert "large_blocks_mmapped" in row  # the allocator actually in effect (this process may reuse the heap)



def test_a_configuration_that_gives_no_result_is_a_row_saying_why():
    failed = common.run_or_record_failure("bench.no_such_benchmark", {"allocator": "system", "variant": "B6"}, 120)
    assert failed["variant"] == "B6" and "No module named bench.no_such_benchmark" in failed["failed"]
    slow = common.run_or_record_failure("bench.train_step", {"allocator": "system"}, 0.01)
    assert "time limit of 0 s" in slow["failed"]
