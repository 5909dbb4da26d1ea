"""The CPU study's work: the task and the warm start (built once per OUT), the gates (measured once), one (arm, seed)
run (the in-process RL loop from the warm start, then the final evaluation), the finished runs of OUT, and the
recall_cost preset's collapse gate read from its finished GRPO runs."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openrlhf_tapo.runners.study_plan import rl_config, run_dir_of, task_config, warm_config

if TYPE_CHECKING:  # modules that import torch and OpenRLHF are imported where used: they print, and take seconds
    from openrlhf_tapo.agent.config import AgentConfig
    from openrlhf_tapo.task.prepare import TaskPaths

# Sampling seeds of every run's final sampled eval (all arms draw the same random numbers) and of the gates, whose
# eval rollouts are then the paired "before" of every run (gates.json eval_question_scores; studies measured before
# 2026-12-06 drew their gates from seed 7_000_000, so their "before" is not paired).
EVAL_SEED = 9_000_000


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
        """OpenRLHF args of the study preset's RL run: the sampling parameters of the gates and the warm-start
        traces."""
        from openrlhf_tapo.adapter.inprocess.loop import build_openrlhf_args
        from openrlhf_tapo.runners.run_presets import run_preset

        return build_openrlhf_args(run_preset("study").rl, self.warm_dir, self.out / "gates")


def prepare(args, out: Path, log) -> Study:
    """The task and the warm-started policy (each built once; reused when OUT already has it)."""
    from openrlhf.utils import get_tokenizer

    from openrlhf_tapo.adapter.inprocess.agent_rollouts import sampling_params
    from openrlhf_tapo.adapter.inprocess.trainer import load_actor
    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.agent.executor import AgentExecutor
    from openrlhf_tapo.task.prepare import held_out_recall, prepare_task, task_paths
    from openrlhf_tapo.task.questions import read_questions
    from openrlhf_tapo.task.warm_start import train_warm_start

    root = out / "task"
    done = root / "done"  # written last: a task interrupted while building is rebuilt
    if done.is_file():
        paths = task_paths(root)
    else:
        log(f"task ({args.task_preset}): {args.entities} entities, {args.num_eval} held out for evaluation")
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
                     progress, held_out_recall(paths))  # fmt: skip
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
    from openrlhf_tapo.task.report import failure_shares

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
    measured["eval_failures"] = failure_shares(measured.pop("eval_responses"))
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


def run_one(arm: str, seed: int, study: Study, args, log):
    from openrlhf_tapo.adapter.inprocess.agent_rollouts import by_kind, evaluate
    from openrlhf_tapo.adapter.inprocess.loop import InProcessRL
    from openrlhf_tapo.adapter.inprocess.trainer import load_actor
    from openrlhf_tapo.eval.study_stats import RunResult, run_curves, tapo_counts
    from openrlhf_tapo.task.gates import question_scores
    from openrlhf_tapo.task.report import failure_shares

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
        eval_failures=failure_shares(responses),
        by_kind=by_kind(responses),
        **tapo_counts(metrics),
    )


def read_results(out: Path) -> list:
    """The finished runs of OUT/results.jsonl (the last line of an (arm, seed) wins)."""
    from openrlhf_tapo.eval.study_stats import RunResult

    path = out / "results.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = RunResult(**json.loads(line))
            rows[(r.arm, r.seed)] = r
    return list(rows.values())


def collapse_gate(out: Path, log) -> dict | None:
    """The collapse gate of the recall_cost preset (`task.gates.collapse_gate`) from the per-step metrics of the GRPO
    (`ppo`) runs OUT has finished, from the warm start's needs_tool call rate on training questions (gates.json),
    written to OUT/collapse_gate.json and printed; None when OUT's task has one kind or no GRPO run has finished."""
    from openrlhf_tapo.task import gates
    from openrlhf_tapo.task.questions import NEEDS_TOOL

    measured = json.loads((out / "gates.json").read_text())
    seeds = sorted(r.seed for r in read_results(out) if r.arm == "ppo")
    if "train_by_kind" not in measured or not seeds:
        return None
    runs = {}
    for seed in seeds:
        lines = (run_dir_of(out, "ppo", seed) / "metrics.jsonl").read_text().splitlines()
        runs[seed] = [json.loads(line) for line in lines if line.strip()]
    start = measured["train_by_kind"].get(NEEDS_TOOL, {}).get("tool_call_rate")
    gate = gates.collapse_gate(runs, start)
    (out / "collapse_gate.json").write_text(json.dumps(gate, indent=1))
    log(f"COLLAPSE GATE over {len(seeds)} GRPO seed(s): {'PASS' if gate['passed'] else 'FAIL'}")
    advantage = gate["calling_advantage"]
    log(f"  mean drop of the needs_tool call rate {gate['value']:.3f} (needs >= {gate['range'][0]}; per seed "
        f"{', '.join(f'{d:.3f}' for d in gate['drops'])}), calling advantage "
        f"{'-' if advantage is None else f'{advantage:.3f}'} (needs > 0)")  # fmt: skip
    for reason in gate["failed_because"]:
        log(f"  {reason}")
    return gate
