#!/usr/bin/env bash
# The CUDA backend's checks that need an NVIDIA GPU, in one run, for a machine that has one:
#   1. the tests marked `cuda` (target="cuda" trains like the C backend: forward, gradients,
#      optimizer steps and epochs of every reference graph, float32, relative 1e-4);
#   2. digits_mlp.py and cnn_digits.py trained on the CPU and on the GPU (same accuracy);
#   3. bench/cuda.py (MLP training samples/s beside PyTorch, the GEMM's TFLOP/s beside cuBLAS).
# Each step's full log goes to LOGDIR (default gpu-check-logs); its tail is printed.
# Needs python3 with numpy, sympy, jinja2, cffi, tqdm, pytest and scikit-learn (torch and
# pytest-xdist optional), nvcc and the NVIDIA driver.  Exit status 1 if any step failed.
#
# Usage, from the repository root:  bash scripts/gpu-check.sh [LOGDIR [STEP...]]
# where STEP is tests, examples or bench (default: all three).
set -u
out=${1:-gpu-check-logs}
shift $(($# > 0))
steps=" ${*:-tests examples bench} "
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 GRAPHC_WERROR=1
status=0

step() {
    local name=$1 start rc
    shift
    echo "== $name: $*"
    start=$(date +%s)
    "$@" >"$out/$name.log" 2>&1
    rc=$?
    tail -n "${TAIL:-20}" "$out/$name.log"
    echo "== $name: exit $rc in $(($(date +%s) - start)) s"
    [ "$rc" -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
nvcc --version | tail -n 1
workers=()
python3 -c "import xdist" 2>/dev/null && workers=(-n 8)
if [[ $steps == *" tests "* ]]; then
    step gpu-tests python3 -m pytest -m cuda -q -rs -p no:cacheprovider "${workers[@]}" \
        tests/test_cuda.py tests/test_cuda_recurrent.py
fi
if [[ $steps == *" examples "* ]]; then
    TAIL=4 step digits-mlp-c python3 examples/digits_mlp.py --target c
    TAIL=4 step digits-mlp-cuda python3 examples/digits_mlp.py --target cuda
    TAIL=5 step cnn-digits-c python3 examples/cnn_digits.py --target c
    TAIL=5 step cnn-digits-cuda python3 examples/cnn_digits.py --target cuda
fi
if [[ $steps == *" bench "* ]]; then
    step bench-cuda python3 bench/cuda.py
fi
exit $status
