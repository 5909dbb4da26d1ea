"""Gain of each setting of docs/demo_budget/run.sh over the warm start, with 95 % t intervals over its RL seeds.

    .venv/bin/python docs/demo_budget/summarize.py runs/demo_budget   # prints the table, writes gains.png there

"before" is the warm start's sampled accuracy on the same 64 eval questions x 4 samples (the study's gate).
"""

import json
import sys
from pathlib import Path

import matplotlib

from openrlhf_tapo.eval.stats import mean_ci

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo_budget")
rows = []
for setting in sorted(p for p in root.iterdir() if (p / "results.jsonl").is_file()):
    before = json.loads((setting / "gates.json").read_text())["checked"]["sampled_accuracy"]["value"]
    runs = [json.loads(line) for line in (setting / "results.jsonl").read_text().splitlines()]
    gain = mean_ci([r["sampled_accuracy"] - before for r in runs])
    greedy = sum(r["greedy_accuracy"] for r in runs) / len(runs)
    rows.append((setting.name, len(runs), before, gain, greedy))
    print(f"{setting.name:<26} seeds {len(runs)}  before {before:.3f}  gain {gain.fmt()}  greedy after {greedy:.3f}")

fig, ax = plt.subplots(figsize=(8, 3.6))
for i, (_, _, _, gain, _) in enumerate(rows):
    ax.errorbar(gain.mean, i, xerr=gain.half_width, fmt="o", capsize=4)
ax.axvline(0.15, color="red", linestyle="--", label="issue 12 floor (+0.15)")
ax.axvline(0.0, color="grey", linewidth=0.8)
ax.set_yticks(range(len(rows)), [r[0] for r in rows])
ax.set_xlabel("sampled accuracy gain over the warm start\n(mean and 95 % CI over 4 RL seeds)")
ax.legend(loc="center left")
fig.tight_layout()
fig.savefig(root / "gains.png", dpi=120)
