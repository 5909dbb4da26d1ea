#!/bin/bash
# The baseline: vanilla OpenRLHF 0.11.2 GRPO (`python -m openrlhf.cli.train_ppo_ray`) on the SAME multimodal
# search-agent job as train_tapo_ray.sh (same model, data, agent, budget; common_search_agent.sh), without TAPO.
#
# Expects
#   GPUs            one node of 8 x 80 GB (NUM_NODES, GPUS_PER_NODE); hybrid engine (colocate_all, vLLM and
#                   DeepSpeed sleep), as train_tapo_ray.sh.
#   Model           MODEL_PATH: a Hugging Face Qwen2.5-VL / Qwen3-VL checkpoint (hub id or local directory).
#   Data            DATASET_PATH: jsonl written by `python -m openrlhf_tapo.agent.data`.
#   Search backend  whatever AGENT_CONFIG's `tools.backend` names, reachable from every GPU node (see
#                   train_tapo_ray.sh). Our agent runs inside OpenRLHF through --train.agent_func_path; the job's
#                   runtime_env tells it where AGENT_CONFIG is.
#   Ray             a running cluster at RAY_ADDRESS with openrlhf==0.11.2 (vLLM extra) and this repository
#                   installed at the same path on every node (the agent imports openrlhf_tapo).
# Every path and size is an environment variable: see common_search_agent.sh.

set -euo pipefail
RUN_NAME="${RUN_NAME:-grpo}"
source "$(dirname "${BASH_SOURCE[0]}")/common_search_agent.sh"

TRAIN_ARGS=("${MODEL_ARGS[@]}" "${ENGINE_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${ALGO_ARGS[@]}" "${VLLM_KL_ARGS[@]}"
            "${LOG_ARGS[@]}")

submit_job openrlhf.cli.train_ppo_ray "${TRAIN_ARGS[@]}"
