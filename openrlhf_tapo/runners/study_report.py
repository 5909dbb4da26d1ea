"""The CPU study's report: OUT/study.md (gates first, per-arm means, paired TAPO - base differences, the correctable
rate, plots) and OUT/summary.json, from the finished runs (eval/study_stats.py computes the tables)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from openrlhf_tapo.runners.study_plan import SCHEDULE_FLAGS


def write_report(results, gates: dict, args, out: Path, planned: int, stopped: str) -> Path:
    """OUT/study.md and OUT/summary.json."""
    from openrlhf_tapo.eval import study_stats as agg

    plots = agg.plot_study(results, out)
    failed = [name for name, g in gates["checked"].items() if not g["passed"]]
    cmd = "python -m openrlhf_tapo.cli.study " + " ".join(sys.argv[1:])
    lines = [
        "# CPU study on the bundled task: base vs base + TAPO",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{cmd}`.",
        f"Runs finished: {len(results)} of {planned} planned. {stopped}",
        "",
        "## Gates of the warm start (measured before any comparison)",
        "",
        f"**GATES FAILED: {', '.join(failed)}. The comparison below is not interpretable as a test of TAPO.**"
        if failed
        else "All gates pass.",
        "",
        agg.gates_table(gates["checked"]),
        "",
        f"Task: {args.entities} entities, {args.num_eval} held out for evaluation. Warm start: {args.warm_steps} "
        f"steps x {args.warm_batch} traces, lr {args.warm_lr}, teacher direct share {args.direct_share}, misread "
        f"share {args.misread_share}. Per run: {args.steps} RL steps x {args.prompts_per_step} prompts x "
        f"{args.n_samples} rollouts, {args.updates_per_step} optimizer step(s) each, lr {args.lr}; TAPO beta "
        f"{args.beta} on the "
        "+TAPO arms (base arms run the stage with beta 0: measure only). Final eval: the eval split at T = 1 with "
        f"{args.eval_samples} samples per question on fixed sampling seeds (the same for every arm), and greedy.",
        "",
        "## Per arm (mean ± 95 % CI half width over seeds)",
        "",
        agg.results_table(results),
        "",
        "## TAPO minus base, paired by seed (95 % t interval; bold: excludes 0)",
        "",
        agg.comparison_table(results),
        "",
        "## Correctable misassignment (base arms: under the base algorithm's own credit)",
        "",
        agg.correctable_table(results),
        "",
        "## When TAPO could act (summed over runs and steps)",
        "",
        agg.witness_table(results),
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
    ]
    path = out / "study.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {
        "gates": gates["checked"],
        "gate_details": {k: v for k, v in gates.items() if k != "checked"},
        **agg.summary(results),
        "runs_finished": len(results),
        "runs_planned": planned,
        "stopped": stopped,
        "config": {k: v for k, v in vars(args).items() if k not in SCHEDULE_FLAGS},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return path
