#!/bin/bash
# SAPO + TAPO for the multimodal search agent: train_tapo_ray.sh with the SAPO soft-gated loss.
#
# SAPO (`--actor.policy_loss_type sapo`) replaces PPO's hard clip by a per-token soft gate (4/tau) * sigmoid(tau *
# (r - 1)), tau = SAPO_TAU_POS for positive advantages and SAPO_TAU_NEG otherwise: unset, the SAPO paper's values,
# whose one definition is PolicyLossConfig (openrlhf_tapo/algorithms/policy_loss.py).
# It is token-level, so TAPO's per-turn credit reaches the gradient unchanged.
#
# Expects
#   GPUs            one node of 8 x 80 GB (NUM_NODES, GPUS_PER_NODE); hybrid engine (see train_tapo_ray.sh).
#   Model           MODEL_PATH: a Hugging Face Qwen2.5-VL / Qwen3-VL checkpoint.
#   Data            DATASET_PATH: jsonl written by `python -m openrlhf_tapo.agent.data`.
#   Search backend  whatever AGENT_CONFIG's `tools.backend` names (see train_tapo_ray.sh).
#   Ray             a running cluster at RAY_ADDRESS with openrlhf==0.11.2 and this repository on every node.
# Every path and size is an environment variable: see common_search_agent.sh.

set -euo pipefail
RUN_NAME="${RUN_NAME:-tapo-sapo}"
source "$(dirname "${BASH_SOURCE[0]}")/common_search_agent.sh"

TAPO_CONFIG="${TAPO_CONFIG:-${WORK_DIR}/configs/tapo.yaml}"
LOSS_ARGS=(--actor.policy_loss_type sapo)
# The temperatures' defaults live in PolicyLossConfig; the script passes one only when it is set.
if [[ -n "${SAPO_TAU_POS:-}" ]]; then LOSS_ARGS+=(--actor.sapo_tau_pos "${SAPO_TAU_POS}"); fi
if [[ -n "${SAPO_TAU_NEG:-}" ]]; then LOSS_ARGS+=(--actor.sapo_tau_neg "${SAPO_TAU_NEG}"); fi
TAPO_ARGS=(
   --tapo.config "${TAPO_CONFIG}"
   --tapo.enable
   --agent.config "${AGENT_CONFIG}"
)

TRAIN_ARGS=("${MODEL_ARGS[@]}" "${ENGINE_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${ALGO_ARGS[@]}" "${VLLM_KL_ARGS[@]}"
            "${LOSS_ARGS[@]}" "${TAPO_ARGS[@]}" "${LOG_ARGS[@]}")

submit_job openrlhf_tapo.cli.train_ppo_ray "${TRAIN_ARGS[@]}"
