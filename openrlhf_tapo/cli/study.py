"""The CPU study in one command: base algorithm vs base + TAPO on the bundled task, over several seeds.

    python -m openrlhf_tapo.cli.study --out runs/study [--losses ppo,sapo,gspo_token] [--seeds 5] [--steps 12]
        [--budget-min 60]

1. Builds the bundled task once (knowledge base, local index, questions, tiny Qwen2.5-VL) and warm-starts the model
   once on gold tool-use traces (the shared initial policy of every run).
2. For every seed, for every arm: the in-process RL loop (`task.rl_loop`, OpenRLHF's own experience maker, PPO
   trainer and loss) from the warm start; `ppo` = GRPO. Base arms run the TAPO stage with beta = 0: it measures the
   correctable-misassignment rate and changes no advantage; `+tapo` arms correct with the given beta.
3. After each run, a greedy evaluation on the eval split; results are appended to OUT/results.jsonl (a rerun with
   the same OUT skips the (arm, seed) pairs already there).
4. OUT/study.md: per-arm means with 95 % CIs, paired TAPO - base differences, the correctable rate; PNG plots.

Size is configurable (steps, prompts, samples, seeds, task size); `--budget-min` stops starting new runs when the
budget is spent and reports what finished, saying so. Seeds are run in the outer loop so a partial study stays
balanced across arms.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

ARM_LOSSES = ("ppo", "sapo", "gspo_token", "gspo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/study", help="output directory (task, warm start, runs, report)")
    p.add_argument("--losses", default="ppo,sapo,gspo_token", help=f"comma list of base losses from {ARM_LOSSES}")
    p.add_argument("--seeds", type=int, default=5, help="seeds per arm")
    p.add_argument("--steps", type=int, default=12, help="RL steps per run")
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--n-samples", type=int, default=4, help="rollouts per prompt (GRPO group size)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--entities", type=int, default=24, help="knowledge-base entities")
    p.add_argument("--num-train", type=int, default=96)
    p.add_argument("--num-eval", type=int, default=32)
    p.add_argument("--warm-epochs", type=int, default=4, help="supervised warm-start epochs on gold traces")
    p.add_argument("--warm-lr", type=float, default=3e-3, help="warm-start AdamW learning rate")
    p.add_argument("--warm-batch", type=int, default=8, help="warm-start traces per optimizer step")
    p.add_argument("--beta", type=float, help="TAPO beta of the +tapo arms (default: TAPOConfig's)")
    p.add_argument("--theta", type=float, help="TAPO similarity threshold (default: TAPOConfig's)")
    p.add_argument("--alpha-min", type=float, help="TAPO confidence gate (default: TAPOConfig's)")
    p.add_argument("--span", choices=["turn", "call"], help="tokens TAPO corrects (default: TAPOConfig's)")
    p.add_argument("--budget-min", type=float, default=None, help="stop starting runs after this many minutes")
    p.add_argument("--seed-list", help="run only these seeds (comma list), e.g. to split a study over processes")
    p.add_argument("--report-only", action="store_true", help="only rewrite OUT/study.md from OUT/results.jsonl")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of this process")
    args = p.parse_args(argv)
    if args.beta is None:
        from openrlhf_tapo.algorithms.tapo import TAPOConfig

        args.beta = TAPOConfig().beta
    return args


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def prepare(args, out: Path, log):
    """The task and the warm-started initial policy (built once; reused when OUT already has them)."""
    from openrlhf.utils import get_tokenizer

    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.agent.executor import AgentExecutor
    from openrlhf_tapo.task.inprocess import load_actor
    from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
    from openrlhf_tapo.task.prepare import TaskConfig, TaskPaths, prepare_task, read_prompt_rows
    from openrlhf_tapo.task.questions import QuestionSetConfig, read_questions
    from openrlhf_tapo.task.rl_loop import RLConfig, build_openrlhf_args, sampling_params
    from openrlhf_tapo.task.warm_start import WarmStartConfig, gold_traces, warm_start

    config = TaskConfig(
        kb=KnowledgeBaseConfig(num_entities=args.entities),
        questions=QuestionSetConfig(num_train=args.num_train, num_eval=args.num_eval),
    )
    log(f"task: {args.entities} entities, {args.num_train} train / {args.num_eval} eval questions")
    root = out / "task"
    if (root / "agent.yaml").is_file() and (root / "model" / "init" / "config.json").is_file():
        kb = root / "kb"  # built by an earlier call with the same --out: reuse (the warm start was made from it)
        splits = ("train", "eval")
        paths = TaskPaths(
            root,
            kb,
            kb / "index",
            root / "agent.yaml",
            root / "model" / "init",
            {s: kb / f"questions_{s}.jsonl" for s in splits},
            {s: root / f"prompts_{s}.jsonl" for s in splits},
        )
    else:
        paths = prepare_task(root, config, progress=log)
    agent_config = load_agent_config(paths.agent_config)
    warm_dir = out / "warm"
    processor = get_tokenizer(str(paths.model_dir), None, "left")  # what PPOTrainer gives the experience maker
    max_len = RLConfig().max_len
    if not (warm_dir / "config.json").is_file():
        _seed_everything(0)
        actor = load_actor(str(paths.model_dir))
        rows = read_prompt_rows(paths.prompts["train"])
        gold = [list(q.gold_actions) for q in read_questions(paths.questions["train"])]
        oargs = build_openrlhf_args(RLConfig(), paths.model_dir, out / "warm_args")
        executor = AgentExecutor(agent_config)
        responses = gold_traces(executor, rows, gold, processor, sampling_params(oargs), max_len)
        pad = processor.tokenizer.pad_token_id
        warm_start(
            actor,
            responses,
            pad,
            max_len,
            WarmStartConfig(args.warm_epochs, args.warm_batch, args.warm_lr),
            progress=log,
        )
        actor.model.save_pretrained(warm_dir)
        processor.save_pretrained(warm_dir)
    return paths, agent_config, processor, warm_dir


def run_one(arm: str, seed: int, args, paths, agent_config, processor, warm_dir: Path, out: Path, log):
    from openrlhf_tapo.algorithms.tapo import TAPOConfig
    from openrlhf_tapo.eval.study import RunResult, tapo_counts
    from openrlhf_tapo.task.inprocess import load_actor
    from openrlhf_tapo.task.prepare import read_prompt_rows
    from openrlhf_tapo.task.rl_loop import InProcessRL, RLConfig, evaluate

    loss, _, tapo_on = arm.partition("+")
    tapo = TAPOConfig(beta=args.beta if tapo_on else 0.0)
    overrides = {k: v for k, v in (("theta", args.theta), ("alpha_min", args.alpha_min), ("span", args.span)) if v}
    tapo = replace(tapo, **overrides)
    config = RLConfig(
        steps=args.steps,
        prompts_per_step=args.prompts_per_step,
        n_samples_per_prompt=args.n_samples,
        micro_batch_size=args.n_samples,
        lr=args.lr,
        policy_loss_type=loss,
        tapo_enable=True,  # base arms: the stage measures (beta 0 changes no advantage)
        tapo=tapo,
        seed=seed,
    )
    run_dir = run_dir_of(out, arm, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    _seed_everything(1000 + seed)
    actor = load_actor(str(warm_dir))
    rl = InProcessRL(actor, processor, agent_config, config, warm_dir, run_dir)
    result = rl.train(read_prompt_rows(paths.prompts["train"]), progress=log)
    summary, _ = evaluate(
        rl.executor, read_prompt_rows(paths.prompts["eval"]), processor, rl.engine, rl.args, config.max_len
    )
    metrics = result.metrics
    tail = metrics[-max(1, len(metrics) // 4) :]
    return RunResult(
        arm=arm,
        seed=seed,
        final_accuracy=summary["accuracy"],
        final_tool_call_rate=summary["tool_call_rate"],
        final_tool_calls=summary["agent/tool_calls"],
        train_accuracy_tail=sum(m["accuracy"] for m in tail) / len(tail),
        seconds=round(result.seconds, 1),
        curve=[m["accuracy"] for m in metrics],
        **tapo_counts(metrics),
    )


def run_dir_of(out: Path, arm: str, seed: int) -> Path:
    return out / "runs" / arm.replace("+", "_") / f"seed{seed}"


def read_results(path: Path) -> list:
    """The finished runs; their TAPO counts are recomputed from each run's metrics.jsonl when it is there."""
    from openrlhf_tapo.eval.study import RunResult, tapo_counts

    if not path.is_file():
        return []
    results = []
    for line in path.read_text().splitlines():
        if line.strip():
            r = RunResult(**json.loads(line))
            metrics_file = run_dir_of(path.parent, r.arm, r.seed) / "metrics.jsonl"
            if metrics_file.is_file():
                metrics = [json.loads(m) for m in metrics_file.read_text().splitlines() if m.strip()]
                for key, value in tapo_counts(metrics).items():
                    setattr(r, key, value)
            results.append(r)
    return results


def write_report(results, out: Path, args, initial: dict | None, planned: int, stopped: str) -> Path:
    from openrlhf_tapo.eval.study import (
        comparison_table,
        correctable_table,
        plot_study,
        results_table,
        witness_table,
    )

    plots = plot_study(results, out)
    cmd = "python -m openrlhf_tapo.cli.study " + " ".join(sys.argv[1:])
    lines = [
        "# CPU study: base vs base + TAPO",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{cmd}`.",
        f"Runs finished: {len(results)} of {planned} planned. {stopped}",
        "",
        f"Per run: {args.steps} RL steps x {args.prompts_per_step} prompts x {args.n_samples} rollouts, lr {args.lr}; "
        f"task: {args.entities} entities, {args.num_train} train / {args.num_eval} eval questions; TAPO beta "
        f"{args.beta} on the +TAPO arms (base arms run the stage with beta 0: measure only).",
    ]
    if initial:
        lines.append(
            f"Warm-start policy before RL (greedy, eval split): accuracy {initial['accuracy']:.3f}, "
            f"tool-call rate {initial['tool_call_rate']:.3f}."
        )
    lines += ["", "## Final accuracy and tool use (mean ± 95 % CI half width over seeds)", "", results_table(results)]
    lines += ["", "## TAPO minus base (final eval accuracy)", "", comparison_table(results)]
    lines += ["", "## Correctable misassignment under the base algorithm", "", correctable_table(results)]
    lines += ["", "## When TAPO could act (summed over runs and steps)", "", witness_table(results)]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "study.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    bad = [x for x in losses if x not in ARM_LOSSES]
    if bad or not losses:
        raise SystemExit(f"study: --losses {args.losses!r}: unknown {bad}; choose from {', '.join(ARM_LOSSES)}")
    if args.seeds < 1 or args.steps < 1:
        raise SystemExit("study: --seeds and --steps must be >= 1")
    from openrlhf_tapo.utils import cuda_stubs

    cuda_stubs.install()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{(time.time() - start) / 60:5.1f} min] {msg}", flush=True)

    paths, agent_config, processor, warm_dir = prepare(args, out, log)
    initial_path = out / "initial_eval.json"
    if not initial_path.is_file():
        from openrlhf_tapo.agent.executor import AgentExecutor
        from openrlhf_tapo.agent.hf_engine import HFGenerationEngine
        from openrlhf_tapo.task.inprocess import load_actor
        from openrlhf_tapo.task.prepare import read_prompt_rows
        from openrlhf_tapo.task.rl_loop import RLConfig, build_openrlhf_args, evaluate

        actor = load_actor(str(warm_dir))
        oargs = build_openrlhf_args(RLConfig(), warm_dir, out / "warm_args")
        rows = read_prompt_rows(paths.prompts["eval"])
        summary, _ = evaluate(
            AgentExecutor(agent_config), rows, processor, HFGenerationEngine(actor.model, processor), oargs, 1536
        )
        initial_path.write_text(json.dumps(summary, indent=2))
    initial = json.loads(initial_path.read_text())
    log(f"warm start: eval accuracy {initial['accuracy']:.3f}, tool-call rate {initial['tool_call_rate']:.3f}")

    results_path = out / "results.jsonl"
    arms = [a for loss in losses for a in (loss, f"{loss}+tapo")]
    seeds = [int(x) for x in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    planned = [(arm, seed) for seed in seeds for arm in arms]
    stopped = "All planned runs finished."
    for i, (arm, seed) in enumerate(planned, 1):
        if args.report_only:
            break
        if (arm, seed) in {(r.arm, r.seed) for r in read_results(results_path)}:  # another process may have run it
            continue
        if args.budget_min is not None and (time.time() - start) / 60 > args.budget_min:
            stopped = f"Stopped by --budget-min {args.budget_min:g} before run {i} ({arm}, seed {seed})."
            log(stopped)
            break
        log(f"run {i}/{len(planned)}: {arm} seed {seed}")
        result = run_one(arm, seed, args, paths, agent_config, processor, warm_dir, out, log)
        with results_path.open("a") as f:  # one short line per append: safe with concurrent seed-list workers
            f.write(json.dumps(result.to_json()) + "\n")
        log(
            f"  -> final accuracy {result.final_accuracy:.3f}, tool-call rate {result.final_tool_call_rate:.3f}, "
            f"correctable failing trajectories {result.failing_traj_correctable:.3f} ({result.seconds / 60:.1f} min)"
        )
    results = [r for r in read_results(results_path) if r.arm in arms]
    all_planned = len(arms) * args.seeds
    if len(results) < all_planned and stopped.startswith("All"):
        stopped = "Partial: the remaining (arm, seed) runs were not run."
    report = write_report(results, out, args, initial, all_planned, stopped)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
