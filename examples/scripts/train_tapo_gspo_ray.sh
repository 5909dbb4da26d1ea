#!/bin/bash
# GSPO + TAPO for the multimodal search agent: train_tapo_ray.sh with the GSPO-token loss.
#
# GSPO-token (`--actor.policy_loss_type gspo_token`) has GSPO's sequence-level ratio and clipping but keeps each
# token's advantage in the gradient, which is what TAPO's per-turn credit needs (OpenRLHF's own `gspo` averages
# per-token advantages away; docs/losses.md). Clip range and no KL as in the GSPO paper (3e-4 / 4e-4).
#
# Expects
#   GPUs            one node of 8 x 80 GB (NUM_NODES, GPUS_PER_NODE); hybrid engine. KL_COEF defaults to 0 here,
#                   so no reference model is loaded.
#   Model           MODEL_PATH: a Hugging Face Qwen2.5-VL / Qwen3-VL checkpoint.
#   Data            DATASET_PATH: jsonl written by `python -m openrlhf_tapo.agent.data`.
#   Search backend  whatever AGENT_CONFIG's `tools.backend` names (see train_tapo_ray.sh).
#   Ray             a running cluster at RAY_ADDRESS with openrlhf==0.11.2 and this repository on every node.
# Every path and size is an environment variable: see common_search_agent.sh.

set -euo pipefail
RUN_NAME="${RUN_NAME:-tapo-gspo}"
KL_COEF="${KL_COEF:-0}"
source "$(dirname "${BASH_SOURCE[0]}")/common_search_agent.sh"

TAPO_CONFIG="${TAPO_CONFIG:-${WORK_DIR}/configs/tapo.yaml}"
GSPO_CLIP_LOW="${GSPO_CLIP_LOW:-3e-4}"
GSPO_CLIP_HIGH="${GSPO_CLIP_HIGH:-4e-4}"

LOSS_ARGS=(
   --actor.policy_loss_type gspo_token
   --actor.eps_clip_low_high "${GSPO_CLIP_LOW}" "${GSPO_CLIP_HIGH}"
)
TAPO_ARGS=(
   --tapo.config "${TAPO_CONFIG}"
   --tapo.enable
   --agent.config "${AGENT_CONFIG}"
)

# No VLLM_KL_ARGS (common_search_agent.sh): with an IS correction on, the GSPO-token sequence ratio is taken against
# vLLM's log-probs, whose bf16 noise is as large as the 3e-4 band, so most sequences would be clipped on the first
# update. Watch ppo_clip_ratio on step 1 instead (docs/cluster.md).
TRAIN_ARGS=("${MODEL_ARGS[@]}" "${ENGINE_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${ALGO_ARGS[@]}" "${LOSS_ARGS[@]}"
            "${TAPO_ARGS[@]}" "${LOG_ARGS[@]}")

submit_job openrlhf_tapo.cli.train_ppo_ray "${TRAIN_ARGS[@]}"
