"""The CPU study's plan: its arms, the (arm, seed) runs in seed-major order, each run's configurations (task, warm
start, RL run spec) from the study's settings, and the settings an OUT was started with.

The settings are `cli/study.py`'s parsed flags; flags left unset take the study's run preset's value
(runners/run_presets.py; `resolve_defaults`), so OUT/config.json records the values used.
"""

from __future__ import annotations

import dataclasses
import json
from operator import attrgetter
from pathlib import Path

from openrlhf_tapo.task.presets import preset_variant  # torch-free

ARMS = ("ppo", "ppo+tapo", "sapo", "sapo+tapo", "gspo_token", "gspo_token+tapo")  # the default study's

# The step-level arms (docs/step_credit.md), run on request (`--arms`): GiGPO, GiGPO + TAPO, the turn reward.
STEP_ARMS = ("ppo+gigpo", "ppo+gigpo+tapo", "ppo+turn_reward")

# flags that may differ between calls on one OUT: they choose which runs run (more seeds extend a study), not how
SCHEDULE_FLAGS = ("out", "arms", "seeds_grpo", "seeds_other", "seed_list", "budget_min", "report_only")
SCHEDULE_FLAGS += ("workers", "threads", "collapse_gate_only")
# flags added after studies were started: an OUT/config.json without one was run at this value
ADDED_FLAGS = {"updates_per_step": 1, "num_select": 0, "eval_split": "eval", "task_preset": "default"}
ADDED_FLAGS |= {"known_share": None, "search_penalty": None, "known_search_share": None}  # recall_cost's knobs


# The study's flags that set a field of its run preset (runners/run_presets.py): flag -> (the field, its type, help).
# cli/study.py generates `--<flag>` from each row (`preset_flags`); a flag left unset takes the preset's value
# (`resolve_defaults`, at run time: the config classes import torch and OpenRLHF, which print), so the value is
# defined once, in the preset, and OUT/config.json records it.
PRESET_FLAGS = {
    "steps": ("rl.steps", int, "RL steps per run"),
    "prompts_per_step": ("rl.prompts_per_step", int, "prompts per RL step"),
    "n_samples": ("rl.n_samples_per_prompt", int, "rollouts per prompt (GRPO group size; also the micro-batch)"),
    "lr": ("rl.lr", float, "RL AdamW learning rate"),
    "entities": ("task.kb.num_entities", int, "knowledge-base entities (one question each)"),
    "num_eval": ("task.questions.num_eval", int, "entities held out for evaluation"),
    "warm_steps": ("warm.steps", int, "warm-start optimizer steps"),
    "warm_batch": ("warm.batch_size", int, "warm-start traces per optimizer step"),
    "warm_lr": ("warm.lr", float, "warm-start peak AdamW learning rate"),
    "content_steps": ("warm.content_steps", int, "warm-start steps on gold content tokens first"),
    "direct_share": ("warm.direct_share", float, "teacher traces without tools"),
    "misread_share": ("warm.misread_share", float, "searched traces misread"),
    "beta": ("rl.tapo.beta", float, "TAPO beta of the +tapo arms (base arms: 0)"),
    "theta": ("rl.tapo.theta", float, "TAPO similarity threshold"),
    "alpha_min": ("rl.tapo.alpha_min", float, "TAPO confidence gate"),
    "span": ("rl.tapo.span", ("turn", "call"), "tokens TAPO corrects"),
}


def preset_flags(parser, names: tuple[str, ...]) -> None:
    """Add `--<name>` (underscores as dashes) for each of `names` from its `PRESET_FLAGS` row."""
    for name in names:
        path, kind, help_text = PRESET_FLAGS[name]
        typed = {"choices": kind} if isinstance(kind, tuple) else {"type": kind}
        help_text += f" (default: the study run preset's {path}, runners/run_presets.py)"
        parser.add_argument(f"--{name.replace('_', '-')}", **typed, help=help_text)


def resolve_defaults(args) -> None:
    """Fill the flags left unset from the study's run preset, so OUT/config.json records the values used."""
    from openrlhf_tapo.runners.run_presets import run_preset

    preset = run_preset("study")
    for flag, (path, _, _) in PRESET_FLAGS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, attrgetter(path)(preset))
    variant = preset_variant(args.task_preset, known_share=args.known_share, search_penalty=args.search_penalty)
    if variant is not None:  # the default task keeps them None: they do not apply to it
        args.known_share, args.search_penalty = variant.known_share, variant.search_penalty
        if args.known_search_share is None:
            args.known_search_share = preset.warm.known_search_share


def seeds_of(arm: str, args) -> int:
    return args.seeds_grpo if arm.partition("+")[0] == "ppo" else args.seeds_other


def planned_runs(args) -> list[tuple[str, int]]:
    """(arm, seed) in seed-major order (all arms of seed 0, then of seed 1, ...), `--seed-list` applied."""
    wanted = {int(s) for s in args.seed_list.split(",")} if args.seed_list else None
    top = max(seeds_of(a, args) for a in args.arms)
    return [
        (arm, seed)
        for seed in range(top)
        if wanted is None or seed in wanted
        for arm in args.arms
        if seed < seeds_of(arm, args)
    ]


def run_dir_of(out: Path, arm: str, seed: int) -> Path:
    return out / "runs" / arm.replace("+", "_") / f"seed{seed}"


def check_config(args, out: Path) -> None:
    """Keep the sizes this OUT was started with (written on the first call); a later call must use the same ones."""
    config = {k: v for k, v in vars(args).items() if k not in SCHEDULE_FLAGS}
    path = out / "config.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k, ADDED_FLAGS.get(k)) != v}
        if changed:
            raise SystemExit(f"study: {out} was started with other settings (saved, now): {changed}")
    else:
        path.write_text(json.dumps(config, indent=1))


def task_config(args):
    from openrlhf_tapo.runners.run_presets import run_preset

    task = run_preset("study").task
    kb = dataclasses.replace(task.kb, num_entities=args.entities)
    questions = dataclasses.replace(task.questions, num_eval=args.num_eval, num_select=args.num_select)
    variant = preset_variant(args.task_preset, known_share=args.known_share, search_penalty=args.search_penalty)
    return dataclasses.replace(task, kb=kb, questions=questions, recall_cost=variant)


def warm_config(args):
    from openrlhf_tapo.runners.run_presets import run_preset

    known = {} if args.known_search_share is None else {"known_search_share": args.known_search_share}
    return dataclasses.replace(
        run_preset("study").warm,
        **known,
        direct_share=args.direct_share,
        misread_share=args.misread_share,
        steps=args.warm_steps,
        content_steps=args.content_steps,
        batch_size=args.warm_batch,
        lr=args.warm_lr,
    )


def rl_config(arm: str, seed: int, args):
    from openrlhf_tapo.algorithms.estimators import ESTIMATORS
    from openrlhf_tapo.eval.study_stats import arm_parts
    from openrlhf_tapo.runners.run_presets import run_preset

    loss, mods = arm_parts(arm)
    rl = run_preset("study").rl
    tapo = dataclasses.replace(
        rl.tapo,
        beta=args.beta if "tapo" in mods else 0.0,  # arms without TAPO: the stage measures, beta 0 changes nothing
        theta=args.theta,
        alpha_min=args.alpha_min,
        span=args.span,
    )
    return dataclasses.replace(
        rl,
        steps=args.steps,
        prompts_per_step=args.prompts_per_step,
        n_samples_per_prompt=args.n_samples,
        micro_batch_size=args.n_samples,
        updates_per_step=args.updates_per_step,
        lr=args.lr,
        policy_loss_type=loss,
        tapo_enable=True,
        tapo=tapo,
        step_credit={name: ESTIMATORS[name].config() for name in mods if name != "tapo"},
        seed=seed,
    )
