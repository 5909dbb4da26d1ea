"""The CPU study in one command: base algorithms vs base + TAPO on the bundled task, over paired seeds.

    python -m openrlhf_tapo.cli.study --out runs/study [--workers 2] [--arms ppo,ppo+tapo,...] [--seeds-grpo 10]
        [--seeds-other 5] [--budget-min 170] [--seed-list 0,1] [--report-only]
        [--task-preset recall_cost [--known-share F] [--search-penalty F] [--known-search-share F]]
    python -m openrlhf_tapo.cli.study --task-preset recall_cost --collapse-gate-only --seeds-grpo 3 --steps 10 \
        --out OUT

1. Builds the bundled task once (`task.prepare`; `--entities`, `--num-eval` size it) and warm-starts the tiny model
   once on the weak teacher's traces (`task.warm_start`): the shared initial policy of every run.
2. Measures the GATES on the warm start (`task.gates`), once, before any comparison: well-formed calls and sampled
   accuracy (eval split, T = 1), tool-following (the eval split against a counterfactual base whose home cities
   are permuted), the correctable rate of GRPO groups (training questions, T = 1). Failing gates do not stop the
   study; they head the report.
3. Runs every (arm, seed), seeds in the outer loop: the in-process RL loop (`adapter/inprocess/loop.py`: OpenRLHF's
   experience maker, PPO trainer and loss) from the warm start. `ppo` = GRPO. Base arms run the TAPO stage with
   beta 0 (it measures the correctable rate every step and changes no advantage); `+tapo` arms correct. After each
   run: the eval split sampled at T = 1 (same sampling seeds for every arm) and greedy. One line per run is appended to
   OUT/results.jsonl; each run keeps its per-step metrics.jsonl under OUT/runs/<arm>/seed<s>/.
4. Writes OUT/study.md (gates first, per-arm means with 95 % CIs, paired TAPO - base differences with 95 % t
   intervals, the correctable rate, plots) and OUT/summary.json.

Resumable: a rerun with the same OUT reuses the task, the warm start and the gates and skips finished runs; its
sizes must match the ones OUT was started with (OUT/config.json). Seed-major order keeps a partial study balanced
and paired. `--workers N` runs N runs at a time in N processes (each `--threads` torch threads; e.g. one per core),
still taking them in seed-major order. `--seed-list`/`--arms` split a study over separate commands writing into one
OUT (start one first, so the task, warm start and gates exist before the others start); `--budget-min` stops
starting runs; `--report-only` only rewrites the report.

`--task-preset recall_cost` runs all of it on the task variant where some answers can be recalled and search costs
reward (task/prepare.py `RecallCostConfig`): its gates add `recall_share` (gates.json) and, once GRPO (`ppo`) runs
have finished, the collapse gate (OUT/collapse_gate.json, `task.gates.collapse_gate`, from their per-step metrics),
and the report splits the eval by question kind. `--collapse-gate-only` runs just the GRPO seeds the collapse gate
needs (`--seeds-grpo`, `--steps`): the same runs, in the same OUT, as the study's `ppo` arm, so a study started on
that OUT afterwards reuses them.
"""

from __future__ import annotations

import argparse
import sys

from openrlhf_tapo.runners.study_plan import ADDED_FLAGS, ARMS, STEP_ARMS, preset_flags
from openrlhf_tapo.runners.study_session import run_study
from openrlhf_tapo.task.presets import TASK_PRESETS, preset_variant  # torch-free


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/study", help="output directory (task, warm start, gates, runs, report)")
    p.add_argument(
        "--arms", default=",".join(ARMS), help=f"comma list from {', '.join(ARMS + STEP_ARMS)} (default: the first 6)"
    )
    p.add_argument("--seeds-grpo", type=int, default=10, help="paired seeds of the ppo and ppo+tapo arms")
    p.add_argument("--seeds-other", type=int, default=5, help="paired seeds of the SAPO and GSPO-token arms")
    p.add_argument("--seed-list", help="run only these seeds (comma list), e.g. to split a study over processes")
    preset_flags(p, ("steps", "prompts_per_step", "n_samples", "lr"))
    p.add_argument(
        "--updates-per-step",
        type=int,
        default=ADDED_FLAGS["updates_per_step"],
        help="optimizer steps per rollout batch (RLConfig.updates_per_step; >1: off-policy updates, where SAPO and "
        "GSPO differ from PPO)",
    )
    p.add_argument("--eval-samples", type=int, default=4, help="T = 1 samples per eval question (final eval, gates)")
    p.add_argument("--gate-prompts", type=int, default=32, help="training questions of the correctable gate")
    preset_flags(p, ("entities", "num_eval"))
    p.add_argument(
        "--num-select",
        type=int,
        default=ADDED_FLAGS["num_select"],
        help="entities held out as the select split, for choosing settings (QuestionSetConfig.num_select)",
    )
    p.add_argument(
        "--eval-split",
        choices=("eval", "select"),
        default=ADDED_FLAGS["eval_split"],
        help="split of the gates and the final evaluation: select while choosing settings, eval to report them",
    )
    preset_flags(p, ("warm_steps", "warm_batch", "warm_lr", "content_steps", "direct_share", "misread_share"))
    p.add_argument(
        "--task-preset",
        default=ADDED_FLAGS["task_preset"],
        choices=tuple(TASK_PRESETS),
        help="the bundled task (task/presets.py): default, or recall_cost (known organisations answered "
        "from memory, a search penalty; its gates add recall_share and the collapse gate)",
    )
    p.add_argument("--known-share", type=float, help="recall_cost: share of organisations known (RecallCostConfig)")
    p.add_argument("--search-penalty", type=float, help="recall_cost: reward charge of a search (RecallCostConfig)")
    p.add_argument(
        "--known-search-share",
        type=float,
        help="recall_cost: teacher traces on known organisations that search anyway (WarmStartConfig)",
    )
    p.add_argument(
        "--collapse-gate-only",
        action="store_true",
        help="recall_cost: run only the GRPO (ppo) seeds of the collapse gate and write OUT/collapse_gate.json",
    )
    preset_flags(p, ("beta", "theta", "alpha_min", "span"))
    p.add_argument("--budget-min", type=float, help="start no run after this many minutes")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from OUT")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel, one process each (e.g. 1 per core)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    args = p.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS + STEP_ARMS]
    if unknown or not arms:
        p.error(f"--arms {args.arms!r}: unknown {unknown}; choose from {', '.join(ARMS + STEP_ARMS)}")
    args.arms = arms
    try:
        preset_variant(args.task_preset, known_share=args.known_share, search_penalty=args.search_penalty)
    except ValueError as err:
        p.error(str(err))
    if args.task_preset == "default" and args.known_search_share is not None:
        p.error("--known-search-share: only the recall_cost preset has this knob; add --task-preset recall_cost")
    if args.collapse_gate_only:
        if args.task_preset != "recall_cost":
            p.error("--collapse-gate-only measures the recall_cost preset's gate: add --task-preset recall_cost")
        args.arms = ["ppo"]
    counts = (args.seeds_grpo, args.seeds_other, args.steps, args.prompts_per_step, args.n_samples, args.eval_samples)
    counts += (args.gate_prompts, args.workers)
    if min(n for n in counts if n is not None) < 1:  # None: the run preset's (resolve_defaults)
        p.error(
            "--seeds-grpo, --seeds-other, --steps, --prompts-per-step, --n-samples, --eval-samples, --gate-prompts "
            "and --workers must be >= 1"
        )
    if args.eval_split == "select" and args.num_select < 1:
        p.error("--eval-split select needs a select split: give --num-select N (e.g. 64)")
    if args.num_eval is not None and args.num_eval < 64:
        print(f"study: note: --num-eval {args.num_eval} < 64 is a smoke size, not a study", file=sys.stderr)
    return args


def main(argv: list[str] | None = None) -> int:
    report = run_study(parse_args(argv))
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
