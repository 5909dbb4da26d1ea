"""Paired (by seed) differences of the eval's failure taxonomy between the step-level study's arms, and the
estimators' own per-step diagnostics, from this folder's results.jsonl and runs/*/seed*/metrics.jsonl.

    python docs/study_step/taxonomy_paired.py docs/study_step [--json docs/study_step/taxonomy_paired.json]
"""

import argparse
import json
from pathlib import Path

from openrlhf_tapo.eval.stats import mean_ci

PAIRS = [("ppo+tapo", "ppo"), ("ppo+gigpo", "ppo"), ("ppo+gigpo+tapo", "ppo+gigpo"), ("ppo+turn_reward", "ppo")]
DIAGNOSTICS = {
    "ppo+gigpo": ["gigpo/singleton_share", "gigpo/step_group_size_mean", "gigpo/mean_abs_step_advantage"],
    "ppo+turn_reward": ["turn_reward/hit_rate", "turn_reward/turn_advantage_nonzero_share"],
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    runs = [json.loads(line) for line in (args.folder / "results.jsonl").read_text().splitlines() if line]
    by = {(r["arm"], r["seed"]): r for r in runs}
    kinds = sorted({k for r in runs for k in r.get("eval_failures", {})})
    out: dict = {"paired": {}, "diagnostics": {}}
    for arm, base in PAIRS:
        seeds = sorted(s for a, s in by if a == arm and (base, s) in by)
        entry = {}
        for kind in kinds:
            ci = mean_ci([by[arm, s]["eval_failures"][kind] - by[base, s]["eval_failures"][kind] for s in seeds])
            entry[kind] = vars(ci)
            print(f"{arm} - {base}  {kind:<17} {ci.fmt(3)}")
        out["paired"][f"{arm} - {base}"] = {"seeds": seeds, **entry}
    for arm, keys in DIAGNOSTICS.items():
        folder = args.folder / "runs" / arm.replace("+", "_")
        rows = [json.loads(x) for f in sorted(folder.glob("seed*/metrics.jsonl")) for x in f.read_text().splitlines()]
        means = {key: sum(m[key] for m in rows if key in m) / max(1, sum(key in m for m in rows)) for key in keys}
        out["diagnostics"][arm] = {"steps": len(rows), **means}
        print(arm, {k: round(v, 3) for k, v in means.items()}, f"over {len(rows)} steps")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
