#!/usr/bin/env bash
# The first command on a GPU node (after the install in README.md and `python scripts/check_gpu_env.py`): tiny random
# Qwen2.5-VL and Qwen3-VL built offline, their forward on CUDA, the pure algorithms on CUDA, a scripted 3-turn agent
# rollout with a tool image, and two RL steps of examples/scripts/train_tapo_ray.sh (hybrid engine, vLLM and
# DeepSpeed sleep, NCCL / CUDA-IPC weight sync) through `ray job submit` to a Ray head it starts, with PASS / FAIL /
# SKIP lines for the prompt-length check, vllm_kl, pixel bytes per trajectory, GPU memory after sleep and the TAPO
# statistics (scripts/gpu_smoke.py says what each checks). Run from anywhere:
#
#     scripts/gpu_smoke.sh                      # PYTHON=/path/to/python scripts/gpu_smoke.sh [--out DIR]
#     scripts/gpu_smoke.sh --dry-run            # no GPU needed: everything but the CUDA parts
#
# Needs torch and transformers; what needs vLLM, Ray, DeepSpeed or OpenRLHF is skipped, with the reason, without them.
set -euo pipefail

PYTHON="${PYTHON:-python}"
cd "$(dirname "$0")/.."
# The repository itself, so an uninstalled checkout runs too.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" scripts/gpu_smoke.py "$@"
