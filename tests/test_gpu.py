"""The CUDA paths (skipped without a GPU; docs/PERFORMANCE.md says where they last ran):
training in fp32 and in bf16 autocast + channels_last, DDP on nccl under torchrun, resume after a
kill, and generation. Tiny settings: seconds on any GPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import tiny_config, tiny_settings, write_prepared

from dagan.checkpoint import load_checkpoint, load_generator
from dagan.inference import LabelLayout, Synthesizer
from dagan.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TESTS = Path(__file__).resolve().parent
RUN = textwrap.dedent("""
    import json, sys, time
    from dagan.config import config_from_dict
    from dagan.train import NullLogger, train

    class PauseAt(NullLogger):
        def should_stop(self, report):
            if report.step == 3:
                print("PAUSED", flush=True)
                time.sleep(600)
            return False

    settings = json.loads(sys.argv[1])
    train(config_from_dict(settings, "test").resolved(), PauseAt() if len(sys.argv) > 2 else None)
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS),
                                                         os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data") / "prepared", num_train=8)


@pytest.mark.parametrize(("amp", "channels_last"), [("off", False), ("bf16", True)])
def test_training_on_cuda(prepared, tmp_path, amp, channels_last):
    result = train(tiny_config(prepared, tmp_path, max_steps=6, device="cuda", amp=amp, channels_last=channels_last))
    assert result.step == 6 and all(np.isfinite(v) for v in result.metrics.values())
    state = load_checkpoint(tmp_path / "checkpoints" / "final.pt")
    assert all(torch.isfinite(t).all() for t in state["generator"].values() if t.is_floating_point())
    assert state["rng"]["cuda"], "the CUDA RNG state is saved for exact resume"


def test_ddp_on_nccl_under_torchrun(prepared, tmp_path):
    settings = tiny_settings(prepared, tmp_path / "ddp", max_steps=4, device="cuda")
    script = tmp_path / "run.py"
    script.write_text(RUN)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                             str(script), json.dumps(settings)], capture_output=True, text=True, timeout=300,
                            env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nccl" in result.stderr or "cuda" in result.stderr
    assert load_checkpoint(tmp_path / "ddp" / "checkpoints" / "final.pt")["step"] == 4


def test_resume_after_sigkill_on_cuda(prepared, tmp_path):
    """Resume restores every state, the CUDA RNG included. CUDA kernels such as the nearest-upsampling
    backward add in a non-deterministic order, so the resumed run equals the straight one to float
    rounding, not bit for bit; the largest difference is printed for docs/PERFORMANCE.md."""
    overrides = {"max_steps": 6, "checkpoint_every": 3, "device": "cuda"}
    train(tiny_config(prepared, tmp_path / "straight", **overrides))
    settings = tiny_settings(prepared, tmp_path / "killed", **overrides)
    script = tmp_path / "run.py"
    script.write_text(RUN)
    process = subprocess.Popen([sys.executable, str(script), json.dumps(settings), "pause"], stdout=subprocess.PIPE,
                               text=True, env=_env())
    try:
        assert process.stdout.readline().strip() == "PAUSED"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    result = train(tiny_config(prepared, tmp_path / "killed", **overrides))
    assert result.resumed_from is not None and result.resumed_from.name == "step-00000003.pt" and result.step == 6
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "final.pt")["generator"]
    resumed = load_checkpoint(tmp_path / "killed" / "checkpoints" / "final.pt")["generator"]
    largest = max((straight[k].float() - resumed[k].float()).abs().max().item() for k in straight
                  if straight[k].is_floating_point())
    scale = max(straight[k].abs().max().item() for k in straight if straight[k].is_floating_point())
    print(f"resume on CUDA: largest weight difference {largest:.3g} (weights up to {scale:.3g})")
    assert largest <= 1e-3 * scale


def test_generation_on_cuda_equals_cpu(prepared, tmp_path):
    train(tiny_config(prepared, tmp_path, max_steps=2, device="cpu"))
    generator, _, semantic_nc = load_generator(tmp_path / "checkpoints" / "final.pt")
    layout = LabelLayout(semantic_nc - 1, False, True, [f"c{i}" for i in range(semantic_nc - 1)],
                         [[i * 20, 0, 0] for i in range(semantic_nc - 1)])
    label = np.random.default_rng(0).integers(0, semantic_nc - 1, (32, 32))
    on_cpu = Synthesizer(generator, layout, "cpu")(label, edges_from_labels=True)
    on_gpu = Synthesizer(generator, layout, "cuda")(label, edges_from_labels=True)
    assert np.abs(on_cpu.astype(int) - on_gpu.astype(int)).max() <= 2
