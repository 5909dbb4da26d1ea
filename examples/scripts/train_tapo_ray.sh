#!/bin/bash
# GRPO + TAPO for a multimodal search agent, on OpenRLHF 0.11.2 (hybrid engine), through our launcher.
#
# Expects
#   GPUs            one node of 8 x 80 GB (NUM_NODES, GPUS_PER_NODE); actor, reference and vLLM are colocated and
#                   take turns (--train.colocate_all, vLLM sleep, DeepSpeed sleep). Qwen2.5-VL-7B fits with ZeRO-3;
#                   for Qwen3-VL-4B (the TAPO paper's model) set MODEL_PATH=Qwen/Qwen3-VL-4B-Instruct.
#   Model           MODEL_PATH: a Hugging Face Qwen2.5-VL / Qwen3-VL checkpoint (hub id or local directory).
#   Data            DATASET_PATH: jsonl written by `python -m openrlhf_tapo.agent.data INPUT OUT.jsonl` from
#                   MMSearch-R1 / FVQA parquet or plain jsonl (prompt, label, images).
#   Search backend  whatever AGENT_CONFIG's `tools.backend` names, reachable from every GPU node: `local` (an index
#                   built by `python -m openrlhf_tapo.cli.build_index`), `http` (a `python -m
#                   openrlhf_tapo.cli.serve_search` service), or `serper` / `serpapi` (API key in the environment).
#   Ray             a running cluster (`ray start --head --num-gpus 8`) at RAY_ADDRESS, with openrlhf==0.11.2 (vLLM
#                   extra) and this repository (`pip install -e .`) installed at the same path on every node.
#   TAPO            TAPO_CONFIG (configs/tapo.yaml) holds the TAPO settings; TAPO_BETA, when set, overrides beta.
# Every path and size is an environment variable: see common_search_agent.sh.
#
# The same job without TAPO (the baseline): train_grpo_ray.sh. Resolved flags without starting anything:
#   DRY_RUN=1 bash examples/scripts/train_tapo_ray.sh   (runs the launcher's --dry-run locally instead of submitting)

set -euo pipefail
RUN_NAME="${RUN_NAME:-tapo-grpo}"
source "$(dirname "${BASH_SOURCE[0]}")/common_search_agent.sh"

TAPO_CONFIG="${TAPO_CONFIG:-${WORK_DIR}/configs/tapo.yaml}"

TAPO_ARGS=(
   --tapo.config "${TAPO_CONFIG}"
   --tapo.enable
   --agent.config "${AGENT_CONFIG}"
)
# beta's default lives in TAPOConfig; the script passes --tapo.beta only when TAPO_BETA is set.
if [[ -n "${TAPO_BETA:-}" ]]; then TAPO_ARGS+=(--tapo.beta "${TAPO_BETA}"); fi

TRAIN_ARGS=("${MODEL_ARGS[@]}" "${ENGINE_ARGS[@]}" "${ROLLOUT_ARGS[@]}" "${ALGO_ARGS[@]}" "${VLLM_KL_ARGS[@]}"
            "${TAPO_ARGS[@]}" "${LOG_ARGS[@]}")

submit_job openrlhf_tapo.cli.train_ppo_ray "${TRAIN_ARGS[@]}"
