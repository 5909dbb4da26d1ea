#!/bin/bash
# Shared by train_tapo_ray.sh, train_grpo_ray.sh, train_tapo_gspo_ray.sh, train_tapo_sapo_ray.sh and the step-credit
# scripts train_gigpo_ray.sh, train_gigpo_tapo_ray.sh, train_turn_reward_ray.sh (sourced, not run): ONE definition
# of the multimodal search-agent job, so TAPO runs and the vanilla-GRPO baseline train the same model on the same
# data with the same agent and budget. Every path and size below is an environment variable with
# a default; set it before calling a script to override it, e.g. `MODEL_PATH=/models/Qwen3-VL-4B-Instruct bash ...`.

WORK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# ── what to train, on what ──
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}"     # or Qwen/Qwen3-VL-4B-Instruct (TAPO paper's model)
DATASET_PATH="${DATASET_PATH:-${WORK_DIR}/data/train.jsonl}" # `python -m openrlhf_tapo.agent.data` output (jsonl)
AGENT_CONFIG="${AGENT_CONFIG:-${WORK_DIR}/configs/agent.yaml}" # tools, search backend, turn limits, reward
RUN_NAME="${RUN_NAME:-search-agent}"
SAVE_PATH="${SAVE_PATH:-${WORK_DIR}/exp/${RUN_NAME}}"

# ── cluster ──
RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
NUM_NODES="${NUM_NODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
VLLM_TP="${VLLM_TP:-1}"                                          # 2 for 7B on 40 GB cards
VLLM_ENGINES="${VLLM_ENGINES:-$((NUM_NODES * GPUS_PER_NODE / VLLM_TP))}"
VLLM_GPU_UTIL="${VLLM_GPU_UTIL:-0.6}"

# ── sizes (TAPO paper: 128 prompts x 8 rollouts per step, lr 1e-6) ──
ROLLOUT_BATCH="${ROLLOUT_BATCH:-128}"         # prompts per step
N_SAMPLES="${N_SAMPLES:-8}"                   # rollouts per prompt (the GRPO group)
TRAIN_BATCH="${TRAIN_BATCH:-1024}"            # samples per optimizer step (= ROLLOUT_BATCH * N_SAMPLES: one step)
ROLLOUT_MICRO_BATCH="${ROLLOUT_MICRO_BATCH:-4}"
TRAIN_MICRO_BATCH="${TRAIN_MICRO_BATCH:-1}"
MAX_LEN="${MAX_LEN:-16384}"                   # prompt + every turn + every tool response, in tokens
MAX_IMAGES="${MAX_IMAGES:-16}"                # vLLM's images per request, >= agent tools.max_images_per_trajectory
NUM_EPISODES="${NUM_EPISODES:-5}"
LR="${LR:-1e-6}"
KL_COEF="${KL_COEF:-0.001}"                   # GRPO's KL loss against the reference model; 0 = no reference model
ZERO_STAGE="${ZERO_STAGE:-3}"
SAVE_STEPS="${SAVE_STEPS:-20}"

# Workers find the agent's YAML through this variable; the job's runtime_env sets it on every node. The agent returns
# pixel_values in the trainer's dtype (--ds.param_dtype bf16 below); our launcher exports it too, OpenRLHF's own
# (the baseline) does not.
WORKER_ENV="\"OPENRLHF_TAPO_AGENT_CONFIG\": \"${AGENT_CONFIG}\", \"OPENRLHF_TAPO_MM_DTYPE\": \"bfloat16\""
RUNTIME_ENV_JSON="{\"env_vars\": {${WORKER_ENV}}}"

ENGINE_ARGS=(
   --actor.num_nodes "${NUM_NODES}"
   --actor.num_gpus_per_node "${GPUS_PER_NODE}"
   --ref.num_nodes "${NUM_NODES}"
   --ref.num_gpus_per_node "${GPUS_PER_NODE}"
   --vllm.num_engines "${VLLM_ENGINES}"
   --vllm.tensor_parallel_size "${VLLM_TP}"
   --vllm.gpu_memory_utilization "${VLLM_GPU_UTIL}"
   --vllm.sync_backend nccl
   --vllm.enable_prefix_caching                # each turn resubmits the whole context: reuse its KV cache
   # hybrid engine: actor, reference and vLLM share the GPUs and sleep in turn
   --train.colocate_all
   --vllm.enable_sleep
   --ds.enable_sleep
   --ds.zero_stage "${ZERO_STAGE}"
   --ds.param_dtype bf16
   --ds.attn_implementation flash_attention_2
   --actor.gradient_checkpointing_enable
   --actor.freeze_visual_encoder
)

MODEL_ARGS=(
   --actor.model_name_or_path "${MODEL_PATH}"
   --ckpt.output_dir "${SAVE_PATH}"
   --ckpt.path "${SAVE_PATH}/ckpt"
   --ckpt.save_hf
   --ckpt.save_steps "${SAVE_STEPS}"
   --ckpt.max_num 3
   --ckpt.load_enable
)

ROLLOUT_ARGS=(
   --train.agent_func_path "${WORK_DIR}/openrlhf_tapo/agent/executor.py"
   --data.prompt_dataset "${DATASET_PATH}"
   --data.input_key prompt
   --data.label_key label
   --data.image_key images
   --data.max_images_per_prompt "${MAX_IMAGES}"
   --data.max_len "${MAX_LEN}"
   --rollout.batch_size "${ROLLOUT_BATCH}"
   --rollout.n_samples_per_prompt "${N_SAMPLES}"
   --rollout.micro_batch_size "${ROLLOUT_MICRO_BATCH}"
   --rollout.temperature 1.0
   --train.batch_size "${TRAIN_BATCH}"
   --train.micro_batch_size "${TRAIN_MICRO_BATCH}"
   --train.max_epochs 1
   --train.num_episodes "${NUM_EPISODES}"
)

ALGO_ARGS=(
   --algo.advantage.estimator group_norm
   --algo.kl.use_loss
   --algo.kl.estimator k3
   --algo.kl.init_coef "${KL_COEF}"
   --actor.adam.lr "${LR}"
)

# The weight-sync health signal: vllm_kl (vLLM's log-probs of the sampled tokens against the trainer's) is logged
# only with an IS correction on. Mode clip with the band [1, 1] sets every token's correction weight to exactly 1,
# so the loss is the uncorrected one and nothing is masked (is_filter_ratio then reads ~1 by construction; ignore
# it). Per-token losses only (ppo, sapo): GSPO's sequence ratio would be taken against vLLM's log-probs instead
# (adapter/stage/openrlhf_loss.py), which its 3e-4 clip band cannot absorb, so train_tapo_gspo_ray.sh leaves it off.
VLLM_KL_ARGS=(
   --algo.advantage.is_correction_level token
   --algo.advantage.is_correction_mode clip
   --algo.advantage.is_correction_threshold 1 1
)

LOG_ARGS=(
   --logger.logging_steps 1
   --logger.tensorboard_dir "${SAVE_PATH}/runs"
   --eval.steps -1
)
if [[ -n "${WANDB_API_KEY:-}" ]]; then
   LOG_ARGS+=(--logger.wandb.key "${WANDB_API_KEY}" --logger.wandb.project "${WANDB_PROJECT:-openrlhf_tapo}"
              --logger.wandb.run_name "${RUN_NAME}")
fi

# submit_job MODULE FLAGS...: `ray job submit` of `python3 -m MODULE FLAGS...` at RAY_ADDRESS. With DRY_RUN=1 nothing
# is submitted: our launcher runs its checks (prompt data, the agent's tools, model, save paths) and prints the
# resolved configuration as JSON on stdout; the submit command goes to stderr. The baseline (OpenRLHF's own launcher)
# is checked the same way, with --tapo.disable and the AGENT_CONFIG its workers will read.
submit_job() {
   local module="$1"
   shift
   local command=(ray job submit --address="${RAY_ADDRESS}" --runtime-env-json="${RUNTIME_ENV_JSON}"
                  -- python3 -m "${module}" "$@")
   if [[ -n "${DRY_RUN:-}" ]]; then
      local flags=("$@")
      if [[ "${module}" != openrlhf_tapo.* ]]; then
         flags+=(--tapo.disable --agent.config "${AGENT_CONFIG}")
      fi
      local shown="${command[*]}"
      if [[ -n "${WANDB_API_KEY:-}" ]]; then
         shown="${shown//"${WANDB_API_KEY}"/<redacted>}"
      fi
      echo "DRY_RUN: would run: ${shown}" >&2
      # through utils/library_output: what torch, bitsandbytes, DeepSpeed print on import goes to SAVE_PATH/launch.log
      exec python3 -m openrlhf_tapo.utils.library_output openrlhf_tapo.cli.train_ppo_ray "${flags[@]}" --dry-run
   fi
   "${command[@]}"
}
