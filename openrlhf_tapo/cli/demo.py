"""`make demo`: the whole pipeline on the embedded default task, on one CPU machine, in one command.

    python -m openrlhf_tapo.cli.demo [--run-dir runs/demo] [--steps N] [--seed S] [--quick]

1. builds the synthetic visual knowledge base (seeded), its local search index and the questions;
2. builds a tiny Qwen2.5-VL + BPE tokenizer offline;
3. warm-starts it on correct tool-use traces made by the real agent executor and tools;
4. evaluates it (greedy) on the eval split;
5. runs GRPO + TAPO: `--engine inprocess` (default) drives OpenRLHF's own classes in this process
   (openrlhf_tapo/task/rl_loop.py); `--engine ray` is the Ray pipeline through our CLI (not wired yet here);
6. evaluates again and writes summary.json / summary.txt and the plots into the run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
from openrlhf_tapo.task.prepare import TaskConfig
from openrlhf_tapo.task.questions import QuestionSetConfig, read_questions
from openrlhf_tapo.task.rl_loop import RLConfig
from openrlhf_tapo.task.warm_start import WarmStartConfig

WHAT_RAN = """What ran (OpenRLHF 0.11.2's own code unless marked [ours]):
  rollouts     [ours] AgentExecutor (agent/executor.py) + ToolRunner on the [ours] local index, generating with
               [ours] HFGenerationEngine (the vLLM actor's generate contract on the actor's transformers model)
  experiences  SamplesGenerator._process_response_into_experience, RemoteExperienceMaker.split_rollout_samples,
               PolicyModelActor.forward (Actor log-probs), RemoteExperienceMaker.compute_advantages_and_returns
               (group_norm = GRPO), then [ours] the TAPO stage (TAPOExperienceMaker, algorithms/tapo.py)
  update       ActorPPOTrainer.ppo_train / training_step with NaiveReplayBuffer and [ours] PolicyLoss
               (adapter/policy_loss.py); [ours] InProcessStrategy stands in for DeepSpeed (one process, AdamW)
  warm start   Actor.forward + SFTLoss in a minimal loop (SFTTrainer needs a DeepSpeed engine)
  logging      BasePPOTrainer._compute_rollout_stats, TensorboardLogger; args from OpenRLHF's own parser
  not run      Ray actors, vLLM, DeepSpeed engine, weight sync (see docs/demo.md for why and what is missing)"""


def build_configs(args) -> tuple[TaskConfig, WarmStartConfig, RLConfig]:
    if args.quick:
        # The CI test's sizes (tests/test_demo_pipeline.py): city and badge questions only, 8 gold traces.
        task = TaskConfig(
            kb=KnowledgeBaseConfig(num_entities=4, seed=args.seed),
            questions=QuestionSetConfig(num_train=8, num_eval=4, kind_weights=(1.0, 0.0, 1.0), seed=args.seed),
            model_seed=args.seed,
        )
        warm = WarmStartConfig(epochs=12, micro_batch_size=2, seed=args.seed)
        rl = RLConfig(steps=2, prompts_per_step=2, n_samples_per_prompt=4, seed=args.seed)
    else:
        task = TaskConfig(
            kb=KnowledgeBaseConfig(seed=args.seed),
            questions=QuestionSetConfig(seed=args.seed),
            model_seed=args.seed,
        )
        warm = WarmStartConfig(seed=args.seed)
        rl = RLConfig(seed=args.seed)
    if args.steps is not None:
        rl.steps = args.steps
    if args.warm_epochs is not None:
        warm.epochs = args.warm_epochs
    rl.policy_loss_type = args.policy_loss_type
    rl.tapo_enable = not args.no_tapo
    return task, warm, rl


def run_demo(args, progress=print) -> dict:
    from openrlhf.utils import get_tokenizer

    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.task.inprocess import load_actor
    from openrlhf_tapo.task.prepare import prepare_task, read_prompt_rows
    from openrlhf_tapo.task.report import format_summary, write_report
    from openrlhf_tapo.task.rl_loop import InProcessRL, evaluate, sampling_params
    from openrlhf_tapo.task.warm_start import gold_traces, warm_start

    task_config, warm_config, rl_config = build_configs(args)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    timings = {}

    def stage(name):
        timings[name] = time.time()
        progress(f"== {name} ({time.time() - start:.0f} s)")

    stage("1/6 task: knowledge base, index, questions, tiny model")
    paths = prepare_task(run_dir / "task", task_config, progress)
    agent_config = load_agent_config(paths.agent_config)
    train_rows = read_prompt_rows(paths.prompts["train"])
    eval_rows = read_prompt_rows(paths.prompts["eval"])

    stage("2/6 warm start on gold traces")
    actor = load_actor(str(paths.model_dir))
    processor = get_tokenizer(str(paths.model_dir), None, "left")  # what PPOTrainer gives the experience maker
    rl = InProcessRL(actor, processor, agent_config, rl_config, paths.model_dir, run_dir)
    gold = [list(q.gold_actions) for q in read_questions(paths.questions["train"])]
    max_len = rl.args.data.max_len
    traces = gold_traces(rl.executor, train_rows, gold, processor, sampling_params(rl.args), max_len)
    rewards = [t["reward"] for t in traces]
    progress(f"  {len(traces)} gold traces through the agent executor (mean reward {sum(rewards) / len(rewards):.2f})")
    warm_losses = warm_start(actor, traces, processor.tokenizer.pad_token_id, max_len, warm_config, progress)
    warm_dir = run_dir / "model" / "warm_start"
    actor.model.save_pretrained(warm_dir)
    processor.save_pretrained(warm_dir)

    stage("3/6 eval before RL")
    before_summary, before = evaluate(rl.executor, eval_rows, processor, rl.engine, rl.args, max_len)
    progress(f"  accuracy {before_summary['accuracy']:.3f}, tool-call rate {before_summary['tool_call_rate']:.3f}")

    if args.engine == "ray":
        raise SystemExit(
            "--engine ray: the Ray pipeline (openrlhf_tapo.cli.train_ppo_ray with the CPU profile) is not wired into "
            "the demo yet; the OpenRLHF flags it would get are RLConfig.openrlhf_argv(model_dir, run_dir, prompts, "
            "eval_prompts), plus --agent.config and --tapo.enable. Use --engine inprocess."
        )
    stage(f"4/6 RL: GRPO{' + TAPO' if rl_config.tapo_enable else ''}, {rl_config.steps} steps, in-process")
    result = rl.train(train_rows, progress)
    progress(f"  checkpoint: {result.checkpoint} (weights moved by L2 {result.weight_change:.4f})")

    stage("5/6 eval after RL")
    after_summary, after = evaluate(rl.executor, eval_rows, processor, rl.engine, rl.args, max_len)
    progress(f"  accuracy {after_summary['accuracy']:.3f}, tool-call rate {after_summary['tool_call_rate']:.3f}")

    stage("6/6 report")
    extra = {
        "engine": args.engine,
        "seconds_total": time.time() - start,
        "stage_start_s": {k: v - start for k, v in timings.items()},
        "warm_start_loss_first_last": [warm_losses[0], warm_losses[-1]] if warm_losses else [],
        "weight_change_l2": result.weight_change,
        "checkpoint": str(result.checkpoint),
        "config": {
            "task": dataclasses.asdict(task_config),
            "warm_start": dataclasses.asdict(warm_config),
            "rl": dataclasses.asdict(rl_config),
        },
    }
    kinds = [row["datasource"] for row in eval_rows]
    summary = write_report(run_dir, before, after, kinds, result.metrics, extra)
    with (run_dir / "eval_samples.jsonl").open("w") as f:
        for name, responses in (("before", before), ("after", after)):
            for r in responses[:4]:
                text = processor.tokenizer.decode(r["observation_tokens"], skip_special_tokens=False)
                f.write(json.dumps({"when": name, "label": r["label"], "reward": r["reward"], "text": text}) + "\n")
    progress(format_summary(summary))
    progress(WHAT_RAN)
    progress(f"run directory: {run_dir}  (metrics.jsonl, tensorboard/, summary.json, summary.txt, checkpoint/)")
    for plot in summary["plots"]:
        progress(f"plot: {plot}")
    progress(f"total {summary['seconds_total']:.0f} s")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/demo", help="where everything is written (default runs/demo)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default 12; 2 with --quick)")
    parser.add_argument("--warm-epochs", type=int, default=None, help="warm-start epochs (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the knowledge base, questions, model and run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every stage")
    parser.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess", help="RL driver")
    parser.add_argument(
        "--policy-loss-type",
        default="ppo",
        choices=("ppo", "gspo", "gspo_token", "sapo"),
        help="--actor.policy_loss_type",
    )
    parser.add_argument("--no-tapo", action="store_true", help="plain GRPO (TAPO stage off)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the matrices are tiny, and on a busy machine OpenMP threads spinning "
        "against other processes made one forward/backward 5x slower with 2 threads than with 1)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_demo(args, progress=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
