#!/usr/bin/env bash
# The regime check on the shipped real-format rows (MMSearch-R1 parquet, 5 rows) with the bundled tiny model.
# No weights can be downloaded and there is no network here, so:
# - the model is the bundled task's tiny Qwen2.5-VL after the demo's warm start (runs/demo/model/warm_start; any
#   local folder works with --pretrain);
# - search runs on a local index built from the rows themselves, standing in for web search: image k is indexed
#   under the title "photo k", and one passage titled "photo k" holds its question and its answer. The tools can
#   therefore return each answer (an image search, then a text search on the title it returned, as the tiny model
#   was warm-started to do);
# - the agent keeps the bundled task's limits and prompt (agent.yaml below), which the tiny model was trained on.
# The numbers describe this tiny model on a toy index: they show the check running on the real format end to end,
# not MMSearch-R1's regime.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${ROWS:-/work/shared/data/mmsearch_r1_mini.parquet}
OUT=${OUT:-runs/regime_real}
WORK=runs/regime_real_index
mkdir -p "$WORK"
PYTHONPATH=$PWD .venv/bin/python - "$ROWS" "$WORK" <<'PY'
import base64, json, sys
from openrlhf_tapo.eval.benchmarks import read_benchmark

rows, work = sys.argv[1], sys.argv[2]
with open(f"{work}/images.jsonl", "w") as images, open(f"{work}/text.jsonl", "w") as text:
    for k, s in enumerate(read_benchmark(rows)):
        title = f"photo {k}"
        for image in s.images:
            images.write(json.dumps({"id": f"img{k}", "title": title, "image": base64.b64encode(image).decode()}) + "\n")
        text.write(json.dumps({"id": f"doc{k}", "title": title, "text": f"{title}: {s.question} {s.answers[0]}."}) + "\n")
PY
PYTHONPATH=$PWD .venv/bin/python -m openrlhf_tapo.cli.build_index --text "$WORK/text.jsonl" \
    --images "$WORK/images.jsonl" --out "$WORK/index" --overwrite
cat > "$WORK/agent.yaml" <<YAML
agent:
  max_turns: 4
  max_tokens_per_turn: 32
  min_tokens_per_turn: 8
  instructions: Use image_search, then text_search, then answer.
  tools_block: false
  tools:
    enabled: [image_search, text_search]
    max_images_per_call: 1
    text_search: {top_k: 2}
    image_search: {top_k: 1}
    backend: {kind: local, index_dir: $PWD/$WORK/index}
  reward: {preset: exact_match}
YAML
PYTHONPATH=$PWD nice -n 10 .venv/bin/python -m openrlhf_tapo.cli.regime_check --prompts "$ROWS" \
    --agent-config "$WORK/agent.yaml" --pretrain runs/demo/model/warm_start --steps 12 --prompts-per-step 5 \
    --n-samples 8 --max-len 512 --out "$OUT" | tee "$OUT.txt"
