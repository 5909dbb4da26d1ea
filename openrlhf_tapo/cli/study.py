"""The CPU study in one command: base algorithms vs base + TAPO on the bundled task, over paired seeds.

    python -m openrlhf_tapo.cli.study --out runs/study [--workers 2] [--arms ppo,ppo+tapo,...] [--seeds-grpo 10]
        [--seeds-other 5] [--budget-min 170] [--seed-list 0,1] [--report-only]

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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import multiprocessing
import os
import random
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # modules that import torch and OpenRLHF are imported where used: they print, and take seconds
    from openrlhf_tapo.agent.config import AgentConfig
    from openrlhf_tapo.task.prepare import TaskPaths

ARMS = ("ppo", "ppo+tapo", "sapo", "sapo+tapo", "gspo_token", "gspo_token+tapo")  # the default study's
# The step-level arms (docs/step_credit.md), run on request (`--arms`): GiGPO, GiGPO + TAPO, the turn reward.
STEP_ARMS = ("ppo+gigpo", "ppo+gigpo+tapo", "ppo+turn_reward")
# Sampling seeds of every run's final sampled eval (all arms draw the same random numbers) and of the gates, whose
# eval rollouts are then the paired "before" of every run (gates.json eval_question_scores; studies measured before
# 2026-12-06 drew their gates from seed 7_000_000, so their "before" is not paired).
EVAL_SEED = 9_000_000
# flags that may differ between calls on one OUT: they choose which runs run (more seeds extend a study), not how
SCHEDULE_FLAGS = ("out", "arms", "seeds_grpo", "seeds_other", "seed_list", "budget_min", "report_only")
SCHEDULE_FLAGS += ("workers", "threads")
# flags added after studies were started: an OUT/config.json without one was run at this value
ADDED_FLAGS = {"updates_per_step": 1, "num_select": 0, "eval_split": "eval"}


# flag -> (config class, field) whose default it takes (`resolve_defaults`), named in the flag's help
DEFAULTS_FROM = {
    "steps": ("RLConfig", "steps"),
    "lr": ("RLConfig", "lr"),
    "warm_steps": ("WarmStartConfig", "steps"),
    "warm_batch": ("WarmStartConfig", "batch_size"),
    "warm_lr": ("WarmStartConfig", "lr"),
    "content_steps": ("WarmStartConfig", "content_steps"),
    "direct_share": ("WarmStartConfig", "direct_share"),
    "misread_share": ("WarmStartConfig", "misread_share"),
    "beta": ("TAPOConfig", "beta"),
    "theta": ("TAPOConfig", "theta"),
    "alpha_min": ("TAPOConfig", "alpha_min"),
    "span": ("TAPOConfig", "span"),
}


def _default(flag: str) -> str:
    return " (default: {}'s {})".format(*DEFAULTS_FROM[flag])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/study", help="output directory (task, warm start, gates, runs, report)")
    p.add_argument(
        "--arms", default=",".join(ARMS), help=f"comma list from {', '.join(ARMS + STEP_ARMS)} (default: the first 6)"
    )
    p.add_argument("--seeds-grpo", type=int, default=10, help="paired seeds of the ppo and ppo+tapo arms")
    p.add_argument("--seeds-other", type=int, default=5, help="paired seeds of the SAPO and GSPO-token arms")
    p.add_argument("--seed-list", help="run only these seeds (comma list), e.g. to split a study over processes")
    p.add_argument("--steps", type=int, help="RL steps per run" + _default("steps"))
    p.add_argument("--prompts-per-step", type=int, default=8, help="prompts per RL step")
    p.add_argument("--n-samples", type=int, default=8, help="rollouts per prompt (GRPO group size)")
    p.add_argument("--lr", type=float, help="RL AdamW learning rate" + _default("lr"))
    p.add_argument(
        "--updates-per-step",
        type=int,
        default=ADDED_FLAGS["updates_per_step"],
        help="optimizer steps per rollout batch (RLConfig.updates_per_step; >1: off-policy updates, where SAPO and "
        "GSPO differ from PPO)",
    )
    p.add_argument("--eval-samples", type=int, default=4, help="T = 1 samples per eval question (final eval, gates)")
    p.add_argument("--gate-prompts", type=int, default=32, help="training questions of the correctable gate")
    p.add_argument("--entities", type=int, default=512, help="knowledge-base entities (one question each)")
    p.add_argument("--num-eval", type=int, default=128, help="entities held out for evaluation")
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
    p.add_argument("--warm-steps", type=int, help="warm-start optimizer steps" + _default("warm_steps"))
    p.add_argument("--warm-batch", type=int, help="warm-start traces per optimizer step" + _default("warm_batch"))
    p.add_argument("--warm-lr", type=float, help="warm-start peak AdamW learning rate" + _default("warm_lr"))
    p.add_argument(
        "--content-steps", type=int, help="warm-start steps on gold content tokens first" + _default("content_steps")
    )
    p.add_argument("--direct-share", type=float, help="teacher traces without tools" + _default("direct_share"))
    p.add_argument("--misread-share", type=float, help="searched traces misread" + _default("misread_share"))
    p.add_argument("--beta", type=float, help="TAPO beta of the +tapo arms (base arms: 0)" + _default("beta"))
    p.add_argument("--theta", type=float, help="TAPO similarity threshold" + _default("theta"))
    p.add_argument("--alpha-min", type=float, help="TAPO confidence gate" + _default("alpha_min"))
    p.add_argument("--span", choices=["turn", "call"], help="tokens TAPO corrects" + _default("span"))
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
    counts = (args.seeds_grpo, args.seeds_other, args.steps, args.eval_samples, args.gate_prompts, args.workers)
    if min(n for n in counts if n is not None) < 1:  # steps None: RLConfig's (resolve_defaults)
        p.error("--seeds-grpo, --seeds-other, --steps, --eval-samples, --gate-prompts and --workers must be >= 1")
    if args.eval_split == "select" and args.num_select < 1:
        p.error("--eval-split select needs a select split: give --num-select N (e.g. 64)")
    if args.num_eval < 64:
        print(f"study: note: --num-eval {args.num_eval} < 64 is a smoke size, not a study", file=sys.stderr)
    return args


def resolve_defaults(args) -> None:
    """Fill the flags left unset with their config class's default, so OUT/config.json records the values used."""
    from openrlhf_tapo.adapter.run_spec import RLConfig
    from openrlhf_tapo.algorithms.tapo import TAPOConfig
    from openrlhf_tapo.task.warm_start import WarmStartConfig

    configs = {"RLConfig": RLConfig(), "WarmStartConfig": WarmStartConfig(), "TAPOConfig": TAPOConfig()}
    for flag, (cls, name) in DEFAULTS_FROM.items():
        if getattr(args, flag) is None:
            setattr(args, flag, getattr(configs[cls], name))


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


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Study:
    """What every stage needs: the task's paths, the agent configuration, the tokenizer, the warm start."""

    out: Path
    paths: TaskPaths
    agent_config: AgentConfig
    processor: Any  # the tokenizer OpenRLHF's PPOTrainer gives the experience maker
    warm_dir: Path

    def rows(self, split: str) -> list[dict]:
        from openrlhf_tapo.task.prepare import read_prompt_rows

        return read_prompt_rows(self.paths.prompts[split])

    def openrlhf_args(self):
        """OpenRLHF args of a default RL run: the sampling parameters of the gates and the warm-start traces."""
        from openrlhf_tapo.adapter.inprocess.loop import build_openrlhf_args
        from openrlhf_tapo.adapter.run_spec import RLConfig

        return build_openrlhf_args(RLConfig(), self.warm_dir, self.out / "gates")


def task_config(args):
    from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
    from openrlhf_tapo.task.prepare import TaskConfig
    from openrlhf_tapo.task.questions import QuestionSetConfig

    questions = QuestionSetConfig(args.num_eval, num_select=args.num_select)
    return TaskConfig(kb=KnowledgeBaseConfig(num_entities=args.entities), questions=questions)


def warm_config(args):
    from openrlhf_tapo.task.warm_start import WarmStartConfig

    return WarmStartConfig(
        direct_share=args.direct_share,
        misread_share=args.misread_share,
        steps=args.warm_steps,
        content_steps=args.content_steps,
        batch_size=args.warm_batch,
        lr=args.warm_lr,
    )


def prepare(args, out: Path, log) -> Study:
    """The task and the warm-started policy (each built once; reused when OUT already has it)."""
    from openrlhf.utils import get_tokenizer

    from openrlhf_tapo.adapter.inprocess.agent_rollouts import sampling_params
    from openrlhf_tapo.adapter.inprocess.trainer import load_actor
    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.agent.executor import AgentExecutor
    from openrlhf_tapo.task.prepare import prepare_task, task_paths
    from openrlhf_tapo.task.questions import read_questions
    from openrlhf_tapo.task.warm_start import train_warm_start

    root = out / "task"
    done = root / "done"  # written last: a task interrupted while building is rebuilt
    if done.is_file():
        paths = task_paths(root)
    else:
        log(f"task: {args.entities} entities, {args.num_eval} held out for evaluation")
        paths = prepare_task(root, task_config(args), progress=log)
        done.touch()
    processor = get_tokenizer(str(paths.model_dir), None, "left")
    study = Study(out, paths, load_agent_config(paths.agent_config), processor, out / "warm")
    marker = study.warm_dir / "warm_start.json"  # written last: a warm start interrupted while saving is redone
    if marker.is_file():
        return study
    config = warm_config(args)
    _seed_everything(config.seed)
    actor = load_actor(str(paths.model_dir))
    oargs = study.openrlhf_args()
    log(f"warm start: {config.steps} steps of {config.batch_size} traces")

    def progress(step: int, loss: float) -> None:
        if step % max(1, config.steps // 10) == 0 or step == config.steps:
            log(f"  warm step {step}/{config.steps}: loss {loss:.3f}")

    questions = read_questions(paths.questions["train"])
    executor = AgentExecutor(study.agent_config)
    sp = sampling_params(oargs)
    train_warm_start(actor, executor, study.rows("train"), questions, study.processor, sp, oargs.data.max_len, config,
                     progress)  # fmt: skip
    actor.model.save_pretrained(study.warm_dir)
    study.processor.save_pretrained(study.warm_dir)
    marker.write_text(json.dumps(dataclasses.asdict(config), indent=1))
    return study


def measure_gates(study: Study, args, log) -> dict:
    """The gate values of the warm start and what they were measured on (`task.gates.measure`)."""
    from openrlhf_tapo.adapter.inprocess.trainer import load_actor
    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.agent.executor import AgentExecutor
    from openrlhf_tapo.agent.hf_engine import HFGenerationEngine
    from openrlhf_tapo.task import gates

    actor = load_actor(str(study.warm_dir))
    oargs = study.openrlhf_args()
    eval_rows, train_rows = study.rows(args.eval_split), study.rows("train")[: args.gate_prompts]
    log(f"gates: {len(eval_rows)} eval questions x {args.eval_samples} at T = 1, on the original and the permuted "
        f"base, and as many training questions on the permuted base; GRPO groups of {len(train_rows)} x "
        f"{args.n_samples} training questions")  # fmt: skip
    config = task_config(args)
    measured = gates.measure(
        AgentExecutor(study.agent_config),
        AgentExecutor(load_agent_config(study.paths.counterfactual_agent_config)),
        eval_rows,
        gates.counterfactual_rows(study.paths.root, config, args.eval_split, eval_rows),
        gates.counterfactual_rows(study.paths.root, config, "train", study.rows("train")[: len(eval_rows)]),
        train_rows,
        args.n_samples,
        args.eval_samples,
        study.processor,
        HFGenerationEngine(actor.model, study.processor),
        oargs,
        oargs.data.max_len,
        EVAL_SEED,
    )
    measured.pop("eval_responses")
    return measured


def ensure_gates(study: Study, args, log) -> None:
    """Measure the gates once per OUT (OUT/gates.json) and print them."""
    from openrlhf_tapo.task import gates

    path = study.out / "gates.json"
    if not path.is_file():
        measured = measure_gates(study, args, log)
        path.write_text(json.dumps(measured, indent=1))
    measured = json.loads(path.read_text())
    failed = [name for name, g in measured["checked"].items() if not g["passed"]]
    log("GATES of the warm start" + (f": FAILED {', '.join(failed)}" if failed else ": all pass"))
    for line in gates.format_gates(measured["checked"]):
        log(line)


def rl_config(arm: str, seed: int, args):
    from openrlhf_tapo.adapter.run_spec import RLConfig
    from openrlhf_tapo.algorithms.estimators import ESTIMATORS
    from openrlhf_tapo.algorithms.tapo import TAPOConfig
    from openrlhf_tapo.eval.study import arm_parts

    loss, mods = arm_parts(arm)
    tapo = TAPOConfig(
        beta=args.beta if "tapo" in mods else 0.0,  # arms without TAPO: the stage measures, beta 0 changes nothing
        theta=args.theta,
        alpha_min=args.alpha_min,
        span=args.span,
    )
    return RLConfig(
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


def run_one(arm: str, seed: int, study: Study, args, log):
    from openrlhf_tapo.adapter.inprocess.agent_rollouts import evaluate
    from openrlhf_tapo.adapter.inprocess.loop import InProcessRL
    from openrlhf_tapo.adapter.inprocess.trainer import load_actor
    from openrlhf_tapo.eval.study import RunResult, run_curves, tapo_counts
    from openrlhf_tapo.task.gates import question_scores

    start = time.time()
    config = rl_config(arm, seed, args)
    run_dir = run_dir_of(study.out, arm, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    _seed_everything(1000 + seed)
    actor = load_actor(str(study.warm_dir))
    rl = InProcessRL(actor, study.processor, study.agent_config, config, study.warm_dir, run_dir)
    result = rl.train(study.rows("train"), progress=log)
    eval_rows = study.rows(args.eval_split)
    ev = (rl.executor, eval_rows, study.processor, rl.engine, rl.args, config.max_len)
    sampled, responses = evaluate(*ev, temperature=1.0, samples=args.eval_samples, seed=EVAL_SEED)
    greedy, _ = evaluate(*ev)
    metrics = result.metrics
    return RunResult(
        arm=arm,
        seed=seed,
        sampled_accuracy=sampled["accuracy"],
        greedy_accuracy=greedy["accuracy"],
        tool_call_rate=sampled["tool_call_rate"],
        train_accuracy_mean=sum(m["accuracy"] for m in metrics) / len(metrics),
        seconds=round(time.time() - start, 1),  # training and both evaluations
        curves=run_curves(metrics),
        eval_question_scores=question_scores(responses, args.eval_samples),
        **tapo_counts(metrics),
    )


def read_results(out: Path) -> list:
    """The finished runs of OUT/results.jsonl (the last line of an (arm, seed) wins)."""
    from openrlhf_tapo.eval.study import RunResult

    path = out / "results.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = RunResult(**json.loads(line))
            rows[(r.arm, r.seed)] = r
    return list(rows.values())


def write_report(results, gates: dict, args, out: Path, planned: int, stopped: str) -> Path:
    """OUT/study.md and OUT/summary.json."""
    from openrlhf_tapo.eval import study as agg

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


class InlineExecutor:
    """`submit` runs the call at once in this process (one worker: the bar can then show each run's steps)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # re-raised by `result()`, as a pool's future does
            future.set_exception(e)
        return future


_WORKER_STUDY: Study | None = None  # a pool process's study, loaded once by `_init_worker`


def _init_worker(args, out: Path) -> None:
    """A pool process: its output (libraries' and the run's step lines) appended to OUT/study.log, `--threads`
    torch threads, the task and warm start loaded once."""
    global _WORKER_STUDY
    log = (out / "study.log").open("a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    from openrlhf_tapo.utils import cuda_stubs

    cuda_stubs.install()
    import torch

    torch.set_num_threads(args.threads)
    _WORKER_STUDY = prepare(args, out, print)


def _run_in_worker(arm: str, seed: int, args):
    return run_one(arm, seed, _WORKER_STUDY, args, print)


def run_all(study: Study, args, planned: list[tuple[str, int]], start: float, log, terminal) -> str:
    """Run the planned (arm, seed) runs OUT has not finished, in order, `--workers` at a time, under a progress bar
    on `terminal`; returns how the loop ended."""
    from tqdm import tqdm

    finished = {(r.arm, r.seed) for r in read_results(study.out)}
    queue = [run for run in planned if run not in finished]
    log(f"runs: {len(finished & set(planned))} of {len(planned)} already finished, {len(queue)} to run")
    stopped = "All planned runs finished."
    with tqdm(total=len(queue), desc="runs", unit="run", file=terminal, dynamic_ncols=True) as bar:
        if args.workers == 1:
            executor = contextlib.nullcontext(InlineExecutor())

            def submit(pool, arm: str, seed: int) -> Future:
                def step_done(line: str) -> None:  # "  step 3/12: reward ..." -> "step 3/12"
                    print(line, flush=True)
                    bar.set_postfix_str(f"{arm} seed {seed} {line.strip().split(':')[0]}")

                return pool.submit(run_one, arm, seed, study, args, step_done)
        else:
            # the worker functions by their module's name: under `python -m` this module is __main__, which a
            # spawned process does not import under that name
            this = importlib.import_module("openrlhf_tapo.cli.study")
            context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads
            executor = ProcessPoolExecutor(args.workers, context, this._init_worker, (args, study.out))

            def submit(pool, arm: str, seed: int) -> Future:
                return pool.submit(this._run_in_worker, arm, seed, args)

        with executor as pool:
            pending: dict[Future, tuple[str, int]] = {}
            while queue or pending:
                while queue and len(pending) < args.workers:
                    arm, seed = queue.pop(0)
                    if (arm, seed) in {(r.arm, r.seed) for r in read_results(study.out)}:  # another process ran it
                        bar.update(1)
                        continue
                    if args.budget_min is not None and (time.time() - start) / 60 > args.budget_min:
                        stopped = f"Stopped by --budget-min {args.budget_min:g} before {arm} seed {seed}."
                        log(stopped)
                        queue.clear()
                        break
                    bar.set_postfix_str(f"{arm} seed {seed}")  # inline: the run starts now, its steps follow
                    pending[submit(pool, arm, seed)] = (arm, seed)
                    if args.workers > 1:
                        bar.set_postfix_str("running " + ", ".join(f"{a} seed {s}" for a, s in pending.values()))
                done, _ = wait(pending, return_when=FIRST_COMPLETED) if pending else (set(), None)
                for future in done:
                    del pending[future]
                    result = future.result()
                    with (study.out / "results.jsonl").open("a") as f:  # one line per run: safe with other processes
                        f.write(json.dumps(result.to_json()) + "\n")
                    bar.update(1)
                    log(
                        f"{result.arm} seed {result.seed}: eval accuracy sampled {result.sampled_accuracy:.3f}, "
                        f"greedy {result.greedy_accuracy:.3f}; correctable {result.failing_traj_correctable:.3f} "
                        f"({result.seconds / 60:.1f} min)"
                    )
    return stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from openrlhf_tapo.task.console import quiet_output
    from openrlhf_tapo.utils import cuda_stubs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only and not (out / "gates.json").is_file():
        raise SystemExit(f"study: --report-only: {out} has no gates.json (no study was started there)")
    planned = planned_runs(args)
    start = time.time()
    stopped = "All planned runs finished."
    # everything the libraries print goes to OUT/study.log; the terminal gets the study's lines and its bar
    with quiet_output(out / "study.log") as terminal:
        cuda_stubs.install()  # before OpenRLHF's trainer modules are imported (no-op where vllm / flash_attn import)
        resolve_defaults(args)  # imports torch and OpenRLHF, which print
        check_config(args, out)
        from tqdm import tqdm

        def log(msg: str) -> None:
            line = f"[{(time.time() - start) / 60:5.1f} min] {msg}"
            print(line, flush=True)
            tqdm.write(line, file=terminal)

        if not args.report_only:
            import torch

            torch.set_num_threads(args.threads)
            study = prepare(args, out, log)
            ensure_gates(study, args, log)
            stopped = run_all(study, args, planned, start, log, terminal)
    results = [r for r in read_results(out) if (r.arm, r.seed) in set(planned)]
    if len(results) < len(planned) and stopped.startswith("All"):
        stopped = "Partial: the remaining (arm, seed) runs have not run yet."
    gates = json.loads((out / "gates.json").read_text())
    report = write_report(results, gates, args, out, len(planned), stopped)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
