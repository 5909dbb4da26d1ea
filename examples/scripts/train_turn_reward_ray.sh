#!/bin/bash
# GRPO + the turn-reward baseline for the multimodal search agent (no TAPO): a verifiable reward for searching
# ("a tool observation contains the label's answer"), normalised over the prompt group and added with weight lam to
# the turns up to the first hit (openrlhf_tapo/algorithms/turn_reward.py). TURN_REWARD_LAM, when set, overrides lam
# (its default lives in TurnRewardConfig). The labels must hold the answer (the converter's `label`).
#
# Expects the same as train_tapo_ray.sh (GPUs, model, data, search backend, Ray); every path and size is an
# environment variable: see common_search_agent.sh. Resolved flags without starting anything:
#   DRY_RUN=1 bash examples/scripts/train_turn_reward_ray.sh

set -euo pipefail
RUN_NAME="${RUN_NAME:-turn-reward-grpo}"
source "$(dirname "${BASH_SOURCE[0]}")/common_search_agent.sh"

TURN_ARGS=(--turn_reward.enable --agent.config "${AGENT_CONFIG}")
if [[ -n "${TURN_REWARD_LAM:-}" ]]; then TURN_ARGS+=(--turn_reward.lam "${TURN_REWARD_LAM}"); fi

TRAIN_ARGS=("${MODEL_ARGS[@]}" "${ENGINE_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${ALGO_ARGS[@]}" "${VLLM_KL_ARGS[@]}"
            "${TURN_ARGS[@]}" "${LOG_ARGS[@]}")

submit_job openrlhf_tapo.cli.train_ppo_ray "${TRAIN_ARGS[@]}"
