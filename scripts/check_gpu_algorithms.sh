#!/usr/bin/env bash
# Check on a GPU node that the pure algorithms (policy losses, TAPO) compute on CUDA what they compute on the CPU,
# then time the losses against OpenRLHF's own PolicyLoss where OpenRLHF is installed. Run from anywhere:
#
#     scripts/check_gpu_algorithms.sh                 # PYTHON=/path/to/python scripts/check_gpu_algorithms.sh
#
# Needs torch with CUDA and pytest; the benchmark also needs OpenRLHF (its PolicyLoss is the baseline).
set -euo pipefail

PYTHON="${PYTHON:-python}"
cd "$(dirname "$0")/.."
# The repository itself, so an uninstalled checkout runs too (the benchmark runs as a script from benchmarks/).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== GPUs"
# Some containers see the GPU without shipping nvidia-smi: torch's own answer below is the one that counts.
nvidia-smi -L || echo "nvidia-smi -L failed or is missing"

echo "== Python packages"
"$PYTHON" - <<'PY'
import importlib.metadata

import torch

try:
    transformers = importlib.metadata.version("transformers")
except importlib.metadata.PackageNotFoundError:
    transformers = "not installed"
print(f"torch {torch.__version__} (CUDA build {torch.version.cuda}), transformers {transformers}")
print(f"torch.cuda.is_available(): {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
PY
# Without CUDA the test module skips and pytest exits 0: that would read as a pass of a check that never ran.
if ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "error: torch sees no CUDA device, so there is nothing to check here" >&2
    exit 1
fi

echo "== CPU vs CUDA: tests/test_algorithms_cuda.py"
"$PYTHON" -m pytest -q tests/test_algorithms_cuda.py -p no:cacheprovider

echo "== Policy loss benchmark against OpenRLHF's PolicyLoss"
if reason=$("$PYTHON" -c "import openrlhf" 2>&1); then
    "$PYTHON" benchmarks/bench_losses.py --device cuda --quick
else
    echo "skipped: the OpenRLHF baseline benchmark needs OpenRLHF, and 'import openrlhf' failed:"
    echo "${reason}" | tail -n 1
fi
