"""bench.official: the checkouts it accepts, the driver's process plumbing, and its ratios and targets.

The official code cannot be shipped or fetched in a test (licence, network), so the driver runs a
stand-in checkout with the official module names (a few lines each); the summary gets synthetic rows.
No timing is asserted.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is scripts at the repo root, not installed
from bench import official  # noqa: E402

STAND_IN = {
    "train.py": "",
    "models/__init__.py": "",
    "models/networks/sync_batchnorm/__init__.py": "",
    "models/networks/__init__.py": """
        import torch
        def define_G(opt):
            return torch.nn.Conv2d(opt.semantic_nc, 3, 3, padding=1)
        """,
    "models/networks/generator.py": "{generator}",
    "models/pix2pix_model.py": """
        import torch
        class Pix2PixModel(torch.nn.Module):
            def __init__(self, opt):  # test.py's path: the generator saved where it loads it from
                super().__init__()
                self.netG = torch.nn.Conv2d(opt.semantic_nc, 3, 3, padding=1)
                path = f"{opt.checkpoints_dir}/{opt.name}/{opt.which_epoch}_net_G.pth"
                self.netG.load_state_dict(torch.load(path, weights_only=True))
            def forward(self, data, mode):
                assert mode == "inference" and data["label"].shape[1] == 1
                return data["image"]
        """,
    "options/__init__.py": "",
    "options/train_options.py": """
        import argparse, sys
        class TrainOptions:
            def parse(self):
                parser = argparse.ArgumentParser()
                for name in ("--name", "--dataset_mode", "--gpu_ids", "--checkpoints_dir", "--batchSize",
                             "--load_size", "--crop_size", "--aspect_ratio", "--ngf"):
                    parser.add_argument(name)
                opt = parser.parse_args(sys.argv[1:])
                print("options printed on stdout, as the official parser does")
                opt.semantic_nc, opt.which_epoch = 36, "latest"
                return opt
        """,
    "options/test_options.py": "from options.train_options import TrainOptions as TestOptions\n",
    "trainers/__init__.py": "",
    "trainers/pix2pix_trainer.py": """
        import torch
        class Pix2PixTrainer:
            def __init__(self, opt):
                self.pix2pix_model = torch.nn.Module()
                self.pix2pix_model.netG = torch.nn.Conv2d(opt.semantic_nc, 3, 3)
            def run_generator_one_step(self, data):
                self.g = float(data["image"].sum())
            def run_discriminator_one_step(self, data):
                self.d = float(data["label"].mean())
            def get_latest_losses(self):
                return {"GAN": self.g, "D_real": self.d}
        """,
}


def stand_in_checkout(root: Path, code: str) -> Path:
    generator = "class SpatialAttention: pass\n" if code == "DAGAN" else "class SPADEGenerator: pass\n"
    folder = root / "DAGAN_v1" if code == "DAGAN" else root
    for name, text in STAND_IN.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text.replace("{generator}", generator)))
    return root


def test_checkouts_are_checked_with_a_message_that_says_what_to_pass(tmp_path):
    dagan, spade = stand_in_checkout(tmp_path / "dagan", "DAGAN"), stand_in_checkout(tmp_path / "spade", "SPADE")
    assert official.code_dir("DAGAN", str(dagan)) == dagan / "DAGAN_v1"
    assert official.code_dir("SPADE", str(spade)) == spade
    with pytest.raises(ValueError, match="not the official DAGAN generator.*Ha0Tang/DAGAN"):
        official.code_dir("DAGAN", str(spade))  # the two swapped
    with pytest.raises(ValueError, match="no train.py.*NVlabs/SPADE"):
        official.code_dir("SPADE", str(tmp_path))
    (spade / "models/networks/sync_batchnorm/__init__.py").unlink()
    with pytest.raises(ValueError, match="sync_batchnorm.*git clone https://github.com/vacancy"):
        official.code_dir("SPADE", str(spade))


def test_missing_or_wrong_arguments_are_one_line_errors(tmp_path, capsys):
    assert official.main(["--dagan", str(tmp_path)]) == 2
    assert "--dagan DIR and --spade DIR are both needed" in capsys.readouterr().err
    assert official.main(["--dagan", str(tmp_path), "--spade", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --dagan") and error.count("\n") == 1


SIZE = {"dataset": "cityscapes", "height": 32, "width": 64, "ngf": 8, "batch": 1, "threads": 1, "warmup": 1,
        "repeats": 2, "device": "cpu", "mode": "fp32"}


@pytest.mark.parametrize(("allocator", "mmapped"), [("system", True), ("reuse", False)])
def test_the_driver_runs_a_checkout_in_its_own_process_with_the_allocator_asked_for(tmp_path, allocator, mmapped):
    folder = official.code_dir("DAGAN", str(stand_in_checkout(tmp_path, "DAGAN")))
    row = official.run("training", {"side": "official", "code": "DAGAN", "code_dir": str(folder),
                                    "allocator": allocator, **SIZE})
    assert row["iteration_s"]["n"] == 2 and set(row["losses"]) == {"GAN", "D_real"}
    assert row["large_blocks_mmapped"] is mmapped  # GLIBC_TUNABLES reached the official process, or not
    row = official.run("inference", {"side": "official", "code": "DAGAN", "code_dir": str(folder),
                                     "allocator": "system", **SIZE, "batch": 2})
    assert row["batch_s"]["n"] == 2 and row["images_per_second"] > 0


def rows(side: str, name: str, seconds: dict[tuple[str, int], float], **fields) -> list[dict]:
    return [{"side": side, **({"code": name} if side == "official" else {"variant": name}), "mode": mode,
             "round": index, "iteration_s": {"values": [value, value]}, **fields}
            for (mode, index), value in seconds.items()]


def test_summary_ratios_per_round_and_targets():
    training = (rows("official", "DAGAN", {("fp32", 0): 4.0, ("fp32", 1): 5.0}, allocator="system")
                + rows("official", "DAGAN", {("fp32", 0): 3.0, ("fp32", 1): 4.0}, allocator="reuse")
                + rows("official", "SPADE", {("fp32", 0): 3.0, ("fp32", 1): 3.0}, allocator="system")
                + rows("official", "SPADE", {("fp32", 0): 3.0, ("fp32", 1): 3.0}, allocator="reuse")
                + rows("ours", "B6", {("fp32", 0): 2.0, ("fp32", 1): 2.5, ("bf16-cl", 0): 0.8, ("bf16-cl", 1): 0.8})
                + rows("ours", "B1", {("fp32", 0): 2.0, ("fp32", 1): 2.0, ("bf16-cl", 0): 0.8, ("bf16-cl", 1): 0.8}))
    summary = official.summarise(training, [])
    b6 = summary["training"]["B6"]
    assert b6["code"] == "DAGAN" and b6["official_s"] == {"system": 4.5, "reuse": 3.5}
    fp32 = b6["modes"]["fp32"]
    assert fp32["ours_s"] == 2.25 and fp32["as_shipped"]["ratio"] == pytest.approx(2.25 / 4.5)
    assert fp32["same_allocator"]["per_round"] == [round(2.0 / 3.0, 4), round(2.5 / 4.0, 4)]
    assert fp32["same_allocator"]["ratio"] == pytest.approx(2.25 / 3.5)
    assert fp32["same_allocator"]["target_met"] is True  # 0.643 <= 0.70
    assert b6["modes"]["bf16-cl"]["same_allocator"]["target_met"] is False  # 0.23 > 0.22
    assert b6["fp32_over"]["bf16-cl"] == pytest.approx(2.25 / 0.8)
    assert summary["b6_over_b1"]["fp32"]["ratio"] == pytest.approx(1.125)
    assert summary["b6_over_b1"]["fp32"]["target_met"] is False and summary["b6_over_b1"]["bf16-cl"]["target_met"]


def test_training_plan_alternates_official_and_our_processes(tmp_path):
    args = official.parser().parse_args([])
    plan = official.training_plan(args, {"DAGAN": tmp_path, "SPADE": tmp_path})
    assert [spec["side"] for spec in plan[:5]] == ["official", "ours", "official", "ours", "ours"]
    assert {(s["code"], s["allocator"]) for s in plan if s["side"] == "official"} == {
        (code, allocator) for code in ("DAGAN", "SPADE") for allocator in ("system", "reuse")}
    assert {(s["variant"], s["mode"]) for s in plan if s["side"] == "ours"} == {
        (variant, mode) for variant in ("B6", "B1") for mode in official.OURS_MODES}
    assert all(s["allocator"] == "reuse" and s["generator_forward_backward"] is False
               for s in plan if s["side"] == "ours")
    fewer = official.training_plan(official.parser().parse_args(["--modes", "fp32", "bf16-cl"]),
                                   {"DAGAN": tmp_path, "SPADE": tmp_path})
    assert {s["mode"] for s in fewer if s["side"] == "ours"} == {"fp32", "bf16-cl"}


def test_inference_summary_gives_images_per_second_of_both():
    inference = [{"side": "official", "code": "DAGAN", "mode": "fp32", "batch": 8, "round": 0,
                  "batch_s": {"values": [16.0]}},
                 {"side": "ours", "variant": "B6", "mode": "fp32", "batch": 8, "round": 0,
                  "batch_s": {"values": [8.0]}}]
    entry = official.summarise([], inference)["inference"]["batch8"]["fp32"]
    assert entry["ratio"] == 0.5 and entry["official_images_per_second"] == 0.5
    assert entry["ours_images_per_second"] == 1.0
