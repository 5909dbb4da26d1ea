#!/bin/bash
# GRPO + GiGPO's step-level advantage for the multimodal search agent (no TAPO): train_tapo_ray.sh's job with
# `--gigpo.enable` instead of `--tapo.enable`, to compare step-level credit with TAPO on the same job.
#
# GiGPO (arXiv 2505.10978; openrlhf_tapo/algorithms/gigpo.py) adds omega * A_step to the group advantage on every turn:
# turns of one prompt group that act from the same tool observations form a step group, and each is credited with
# how its discounted return compares with theirs. GIGPO_OMEGA / GIGPO_GAMMA, when set, override omega and gamma (their
# defaults live in GiGPOConfig).
#
# Expects the same as train_tapo_ray.sh (GPUs, model, data, search backend, Ray); every path and size is an
# environment variable: see common_search_agent.sh. Resolved flags without starting anything:
#   DRY_RUN=1 bash examples/scripts/train_gigpo_ray.sh

set -euo pipefail
RUN_NAME="${RUN_NAME:-gigpo-grpo}"
source "$(dirname "${BASH_SOURCE[0]}")/common_search_agent.sh"

GIGPO_ARGS=(--gigpo.enable --agent.config "${AGENT_CONFIG}")
if [[ -n "${GIGPO_OMEGA:-}" ]]; then GIGPO_ARGS+=(--gigpo.omega "${GIGPO_OMEGA}"); fi
if [[ -n "${GIGPO_GAMMA:-}" ]]; then GIGPO_ARGS+=(--gigpo.gamma "${GIGPO_GAMMA}"); fi

TRAIN_ARGS=("${MODEL_ARGS[@]}" "${ENGINE_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${ALGO_ARGS[@]}" "${VLLM_KL_ARGS[@]}"
            "${GIGPO_ARGS[@]}" "${LOG_ARGS[@]}")

submit_job openrlhf_tapo.cli.train_ppo_ray "${TRAIN_ARGS[@]}"
