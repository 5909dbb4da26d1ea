"""Gain of each setting of docs/demo_budget/run.sh over the warm start, over its RL seeds.

    .venv/bin/python docs/demo_budget/summarize.py runs/demo_budget   # prints the table, writes gains.png there

"before" is the warm start's sampled accuracy on the same eval questions (the study's gate). Settings measured
since 2026-12-06 are PAIRED: the gate's eval used the runs' own sampling seeds, and both record a score per
question (`eval_question_scores`); their gain is `eval.stats.expected_gain`: the mean over RL seeds with a 95 %
interval that adds the spread between seeds and the eval's own sampling error (per-question paired differences),
and the interval of one new run (the range a user should expect). Older settings have no per-question scores and a
"before" drawn with other seeds: their interval is the spread over RL seeds only, after minus a fixed "before"
(marked "unpaired"). With --json PATH the paired rows are also written there.
"""

import json
import sys
from pathlib import Path

import matplotlib

from openrlhf_tapo.eval.stats import expected_gain, mean_ci, paired_ci

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

args = sys.argv[1:]
json_path = Path(args.pop(args.index("--json") + 1)) if "--json" in args else None
args = [a for a in args if a != "--json"]
root = Path(args[0] if args else "runs/demo_budget")
rows, records = [], {}
for setting in sorted(p for p in root.iterdir() if (p / "results.jsonl").is_file()):
    gates = json.loads((setting / "gates.json").read_text())
    before = gates["checked"]["sampled_accuracy"]["value"]
    runs = [json.loads(line) for line in (setting / "results.jsonl").read_text().splitlines() if line.strip()]
    greedy = sum(r["greedy_accuracy"] for r in runs) / len(runs)
    before_q = gates.get("eval_question_scores")
    if before_q and all(r.get("eval_question_scores") for r in runs):
        afters = [r["eval_question_scores"] for r in sorted(runs, key=lambda r: r["seed"])]
        gain, one_run = expected_gain(before_q, afters)
        per_run = [paired_ci(before_q, a) for a in afters]
        note = (
            f"paired, {len(before_q)} questions x {gates['eval_samples']}; one run: [{one_run.low:+.3f}, "
            f"{one_run.high:+.3f}]; per seed: "
            + ", ".join(f"{c.mean:+.3f} [{c.low:+.3f}, {c.high:+.3f}]" for c in per_run)
        )
        records[setting.name] = {
            "seeds": sorted(r["seed"] for r in runs),
            "before": before,
            "after_mean": sum(r["sampled_accuracy"] for r in runs) / len(runs),
            "expected_gain": {"mean": gain.mean, "low": gain.low, "high": gain.high, "se": gain.std},
            "one_run_interval": {"low": one_run.low, "high": one_run.high},
            "per_seed_gain": [{"mean": c.mean, "low": c.low, "high": c.high} for c in per_run],
            "greedy_after_mean": greedy,
            "questions": len(before_q),
            "samples_per_question": gates["eval_samples"],
        }
    else:
        gain, note = mean_ci([r["sampled_accuracy"] - before for r in runs]), "unpaired: RL-seed spread only"
    rows.append((setting.name, gain))
    print(
        f"{setting.name:<26} seeds {len(runs)}  before {before:.3f}  gain {gain.mean:+.3f} [{gain.low:+.3f}, "
        f"{gain.high:+.3f}]  greedy after {greedy:.3f}  ({note})"
    )
if json_path is not None:
    json_path.write_text(json.dumps(records, indent=1) + "\n")

fig, ax = plt.subplots(figsize=(8, 3.6))
for i, (_, gain) in enumerate(rows):
    ax.errorbar(gain.mean, i, xerr=gain.half_width, fmt="o", capsize=4)
ax.axvline(0.15, color="red", linestyle="--", label="issue 12 floor (+0.15)")
ax.axvline(0.0, color="grey", linewidth=0.8)
ax.set_yticks(range(len(rows)), [r[0] for r in rows])
ax.set_xlabel("sampled accuracy gain over the warm start\n(mean and 95 % CI over RL seeds)")
ax.legend(loc="center left")
fig.tight_layout()
fig.savefig(root / "gains.png", dpi=120)
