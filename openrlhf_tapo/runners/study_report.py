"""The CPU study's report: OUT/study.md (gates first, per-arm means, paired TAPO - base differences, the correctable
rate, plots) and OUT/summary.json, from the finished runs (eval/study_stats.py computes the tables)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from openrlhf_tapo.runners.study_plan import SCHEDULE_FLAGS


def write_report(
    results, gates: dict, args, out: Path, planned: int, stopped: str, collapse: dict | None = None
) -> Path:
    """OUT/study.md and OUT/summary.json; `collapse`: the collapse gate (`study_runs.collapse_gate`), shown with the
    others."""
    from openrlhf_tapo.eval import study_stats as agg

    plots = agg.plot_study(results, out, gates.get("eval_failures"))
    checked = {**gates["checked"], **({"collapse": collapse} if collapse else {})}
    failed = [name for name, g in checked.items() if not g["passed"]]
    cmd = "python -m openrlhf_tapo.cli.study " + " ".join(sys.argv[1:])
    variant = known = ""
    if args.task_preset == "recall_cost":
        variant = f" (recall_cost: known share {args.known_share}, search penalty {args.search_penalty})"
        known = f", searched share on known organisations {args.known_search_share}"
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
        agg.gates_table(checked),
        "",
        f"Task: {args.entities} entities, {args.num_eval} held out for evaluation{variant}. Warm start: "
        f"{args.warm_steps} steps x {args.warm_batch} traces, lr {args.warm_lr}, teacher direct share "
        f"{args.direct_share}, misread share {args.misread_share}{known}. Per run: {args.steps} RL steps x "
        f"{args.prompts_per_step} prompts x {args.n_samples} rollouts, {args.updates_per_step} optimizer step(s) "
        f"each, lr {args.lr}; TAPO beta "
        f"{args.beta} on the "
        "+TAPO arms (base arms run the stage with beta 0: measure only). Final eval: the eval split at T = 1 with "
        f"{args.eval_samples} samples per question on fixed sampling seeds (the same for every arm), and greedy.",
        "",
        "## Per arm (mean ± 95 % CI half width over seeds)",
        "",
        agg.results_table(results),
        "",
        *(["## Per question kind", "", agg.kinds_table(results), ""] if agg.kinds_table(results) else []),
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
        *(
            [
                "## Failure taxonomy of the eval (first error; share of all sampled trajectories)",
                "",
                agg.failures_table(results, gates["eval_failures"]),
                "",
            ]
            if "eval_failures" in gates
            else []
        ),
        *[f"![{p.stem}]({p.name})" for p in plots],
    ]
    path = out / "study.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {
        "gates": {name: {k: g[k] for k in ("value", "range", "passed")} for name, g in checked.items()},
        "gate_details": {k: v for k, v in gates.items() if k != "checked"},
        **agg.summary(results),
        "runs_finished": len(results),
        "runs_planned": planned,
        "stopped": stopped,
        "config": {k: v for k, v in vars(args).items() if k not in SCHEDULE_FLAGS},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return path
