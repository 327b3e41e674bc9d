#!/usr/bin/env bash
# Every GPU check in one run, on a machine with one CUDA GPU (docs/PERFORMANCE.md, "On a GPU"):
#   1. the CUDA tests (tests/test_gpu.py and the CUDA cases of tests/test_fast_paths.py);
#   2. the benchmark rows at the paper's resolutions (bench.gpu: Cityscapes 512x256, ADE20K 256x256;
#      batch 4 per GPU as the paper, and larger batches for the largest that fits);
#   3. the registered (pyfunc) model's generation throughput on CUDA at 512x256 (bench.pyfunc).
# Usage: bench/gpu_checks.sh [OUT_DIR]   (default bench/results; logs and JSON land there)
# Needs the project's runtime packages (torch, torchvision, numpy, pyyaml, pillow, pyarrow, tqdm, pandas,
# pytest) and mlflow or mlflow-skinny for step 3. Each step has its own time limit; a failing step does
# not stop the others, and the exit code says whether all passed.
set -u
out=${1:-bench/results}
mkdir -p "$out"
python=${PYTHON:-python3}
status=0
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date +%T))"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local code=$?
    if [ "$code" -ne 0 ]; then
        echo "   FAILED (exit $code; 124 = over its time limit): see $out/$name.log"; status=1
    fi
    tail -n 25 "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

step gpu_tests 150 "$python" -m pytest -q -p no:cacheprovider -rA -s tests/test_gpu.py \
    "tests/test_fast_paths.py::test_fused_spectral_norm_matches_torch_spectral_norm" \
    "tests/test_fast_paths.py::test_training_uses_fused_adam_which_equals_the_per_parameter_loop"
step bench_cityscapes 200 "$python" -m bench.gpu --require-gpu --presets cityscapes --batches 4 \
    --modes fp32 bf16 bf16-cl --variants B1 B6 --warmup 2 --repeats 5 --out "$out/gpu_cityscapes.json"
step pyfunc 90 "$python" -m bench.pyfunc --preset cityscapes --size 512 256 --rows 16 --out "$out/pyfunc.json"
step bench_ade20k 80 "$python" -m bench.gpu --require-gpu --presets ade20k --batches 4 \
    --modes fp32 bf16-cl --variants B6 --warmup 2 --repeats 5 --out "$out/gpu_ade20k.json"
step bench_largest 90 "$python" -m bench.gpu --require-gpu --presets cityscapes --batches 16 32 \
    --modes bf16-cl --variants B6 --warmup 2 --repeats 3 --out "$out/gpu_largest.json"
step bench_compile 150 "$python" -m bench.gpu --require-gpu --presets cityscapes --batches 4 \
    --modes bf16-compile --variants B6 --warmup 3 --repeats 5 --out "$out/gpu_compile.json"
exit $status
