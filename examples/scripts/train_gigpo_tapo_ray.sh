#!/bin/bash
# GRPO + GiGPO + TAPO for the multimodal search agent: GiGPO's step term is added to the group advantage first, then
# TAPO corrects the negative credit of matched call turns (the order algorithms/estimators.py defines).
#
# Expects the same as train_tapo_ray.sh (GPUs, model, data, search backend, Ray); every path and size is an
# environment variable: see common_search_agent.sh. TAPO_CONFIG (configs/tapo.yaml) holds the TAPO settings;
# GIGPO_OMEGA / GIGPO_GAMMA / TAPO_BETA, when set, override theirs. Resolved flags without starting anything:
#   DRY_RUN=1 bash examples/scripts/train_gigpo_tapo_ray.sh

set -euo pipefail
RUN_NAME="${RUN_NAME:-gigpo-tapo-grpo}"
source "$(dirname "${BASH_SOURCE[0]}")/common_search_agent.sh"

TAPO_CONFIG="${TAPO_CONFIG:-${WORK_DIR}/configs/tapo.yaml}"
CREDIT_ARGS=(--tapo.config "${TAPO_CONFIG}" --tapo.enable --gigpo.enable --agent.config "${AGENT_CONFIG}")
if [[ -n "${TAPO_BETA:-}" ]]; then CREDIT_ARGS+=(--tapo.beta "${TAPO_BETA}"); fi
if [[ -n "${GIGPO_OMEGA:-}" ]]; then CREDIT_ARGS+=(--gigpo.omega "${GIGPO_OMEGA}"); fi
if [[ -n "${GIGPO_GAMMA:-}" ]]; then CREDIT_ARGS+=(--gigpo.gamma "${GIGPO_GAMMA}"); fi

TRAIN_ARGS=("${MODEL_ARGS[@]}" "${ENGINE_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${ALGO_ARGS[@]}" "${VLLM_KL_ARGS[@]}"
            "${CREDIT_ARGS[@]}" "${LOG_ARGS[@]}")

submit_job openrlhf_tapo.cli.train_ppo_ray "${TRAIN_ARGS[@]}"
