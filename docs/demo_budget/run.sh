#!/usr/bin/env bash
# Choosing the demo's RL settings (docs/demo.md, "Choosing the RL settings"): each setting "STEPS LR [PROMPTS]" runs
# GRPO + TAPO in-process (the study's runner, `python -m openrlhf_tapo.cli.study`) for 4 RL seeds from the task and
# the warm start of one `make demo` run (SRC, default runs/demo_v5: seed 0), with the demo's eval split (64
# questions, 4 samples at T = 1, and greedy), into ROOT/<setting> (default runs/demo_budget). Resumable: a setting's
# study continues where it stopped.
#
#   bash docs/demo_budget/run.sh "8 1e-3" "8 2e-3" "8 5e-4" "12 1e-3" "12 5e-4 8" "16 5e-4 4"
#   .venv/bin/python docs/demo_budget/summarize.py runs/demo_budget
set -euo pipefail
SRC=${SRC:-runs/demo_v5}
ROOT=${ROOT:-runs/demo_budget}
# The source run's warm-start settings (its warm-start marker, model/warm_start/warm_start.json, written by the demo
# since 2026-12-06; for older runs, its summary.json): the study records them in config.json and in the warm-start
# marker it writes itself, so each setting's files say which warm start it ran from.
if [ -e "$SRC/model/warm_start/warm_start.json" ]; then
  WARM=$(cat "$SRC/model/warm_start/warm_start.json")
else
  WARM=$(.venv/bin/python -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['config']['warm_start']))" \
    "$SRC/summary.json")
fi
WARM_FLAGS=$(.venv/bin/python -c "import json, sys; w = json.loads(sys.argv[1]); print(
  f\"--warm-steps {w['steps']} --content-steps {w['content_steps']} --warm-batch {w['batch_size']} \"
  f\"--warm-lr {w['lr']} --direct-share {w['direct_share']} --misread-share {w['misread_share']}\")" "$WARM")
for setting in "$@"; do
  set -- $setting
  P=${3:-8}
  OUT=$ROOT/steps$1_lr$2_prompts$P
  mkdir -p $OUT
  if [ ! -e $OUT/task/done ]; then  # the study reuses a task and a warm start it finds (their markers)
    cp -r $SRC/task $OUT/task && touch $OUT/task/done
    cp -r $SRC/model/warm_start $OUT/warm && echo "$WARM" > $OUT/warm/warm_start.json
  fi
  .venv/bin/python -m openrlhf_tapo.cli.study --out $OUT --num-eval 64 --arms ppo+tapo --seeds-grpo 4 \
      --steps $1 --lr $2 --prompts-per-step $P --workers 2 --threads 1 $WARM_FLAGS
done
