#!/usr/bin/env bash
# The regime check on the bundled task: its training prompts, agent and the demo's warm start, as `make demo` leaves
# them in runs/demo (task/ and model/warm_start/). GRPO groups, learning rate and max_len as the demo's RL stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/regime_bundled}
PYTHONPATH=$PWD nice -n 10 .venv/bin/python -m openrlhf_tapo.cli.regime_check \
    --prompts runs/demo/task/prompts_train.jsonl --agent-config runs/demo/task/agent.yaml \
    --pretrain runs/demo/model/warm_start --steps 12 --prompts-per-step 8 --n-samples 8 --max-len 512 \
    --out "$OUT" | tee "$OUT.txt"
