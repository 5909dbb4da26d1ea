#!/usr/bin/env python3
"""The first command on a GPU node: `scripts/gpu_smoke.sh [--dry-run] [--out DIR] [--families ...]`.

Builds a tiny random Qwen2.5-VL and Qwen3-VL offline (the bundled task, task/prepare.py), then checks, one line each
(`PASS`, `FAIL` or `SKIP`, the check's name, what was seen):

  environment        torch and its CUDA devices; which of vLLM, Ray, DeepSpeed and OpenRLHF import
  tiny model         the task with a tiny model of each family, built offline
  stock processor    where torchvision imports: transformers' own processor saved with the model (as a released
                     checkpoint has it) and checked against the image-only one the CPU tests use
  forward            each model's forward on an image, on CUDA in bf16 (`--dry-run` / no GPU: on the CPU in fp32)
  algorithms         tests/test_algorithms_cuda.py: the losses and TAPO compute on CUDA what they compute on CPU
  pixel bytes        one scripted 3-turn rollout of our agent (image search -> a tool image, text search, answer):
                     the bytes of pixel values the trajectory hands to the trainer, and per image token
  ray job            two RL steps of examples/scripts/train_tapo_ray.sh (hybrid engine: --train.colocate_all,
                     --vllm.enable_sleep, --ds.enable_sleep, NCCL / CUDA-IPC weight sync) on a Ray head started here,
                     through `ray job submit`; then, from its metrics:
  prompt length      the rollout's per-turn check of vLLM's expanded prompt against the trajectory's tokens: a metric
                     `errors/prompt_length` (the agent's counter) logged and 0
  vllm_kl            logged and |vllm_kl| < 1e-2 (the weight sync's health signal)
  memory after sleep device memory sampled during the job (torch.cuda.mem_get_info, every 0.1 s): between vLLM's
                     first and last wake (usage above half its peak), usage fell to half the peak or below (vLLM's
                     sleep released weights and KV cache while the models loaded and DeepSpeed trained)
  job pixel bytes    the agent's `mm_bytes` (multimodal bytes per trajectory, in the dtype the trainer computes in)
  tapo stats         the TAPO stage's statistics (tapo/num_calls, tapo/failing_traj_correctable_frac) logged, finite

What cannot run is skipped with the reason: without a GPU (or with `--dry-run`) every CUDA part; without vLLM, Ray,
DeepSpeed or OpenRLHF the Ray job and its checks (and without OpenRLHF the agent's rollout); the rest still runs.
Each Ray job is bounded (`--job-timeout`, 240 s) and so is the whole smoke (`--time-limit`, 570 s: a job that would
not fit is skipped, saying so), so that it ends within 10 minutes on one GPU.
Exit status 1 when any check fails, else 0.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STACK = ("vllm", "ray", "deepspeed", "openrlhf")  # what the Ray job needs besides torch and transformers
KL_LIMIT = 1e-2
MM_BYTES_METRIC = "mm_bytes"  # the agent's bytes of multimodal tensors per trajectory (mean over the step)
TAPO_STATS = ("tapo/num_calls", "tapo/failing_traj_correctable_frac")
PROMPT_LENGTH_METRIC = "errors/prompt_length"  # the count of the rollout's per-turn prompt-length check


class Report:
    """The check lines, printed as they come."""

    def __init__(self):
        self.lines: list[tuple[str, str, str]] = []

    def add(self, status: str, name: str, detail: str) -> None:
        self.lines.append((status, name, detail))
        print(f"{status:<4} {name}: {detail}", flush=True)

    def failed(self) -> bool:
        return any(status == "FAIL" for status, _, _ in self.lines)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(report: Report, dry_run: bool) -> tuple[bool, list[str]]:
    """(whether CUDA is used, the missing parts of the stack)."""
    import torch

    cuda = torch.cuda.is_available() and not dry_run
    devices = (
        ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        if torch.cuda.is_available()
        else "no CUDA device"
    )
    missing = []
    for name in STACK:
        try:
            importlib.import_module(name)
        except Exception as err:  # an import that fails for any reason is what this line reports
            missing.append(f"{name} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    stack = ", ".join(f"{name} {_version(name)}" for name in STACK)
    mode = "--dry-run: CUDA parts skipped" if dry_run else ("CUDA" if cuda else "no GPU: CUDA parts skipped")
    report.add(
        "PASS",
        "environment",
        f"torch {torch.__version__} ({devices}), transformers {_version('transformers')}, {stack}; {mode}"
        + (f"; cannot import: {'; '.join(missing)}" if missing else ""),
    )
    return cuda, missing


def build_task(root: Path, family: str):
    from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
    from openrlhf_tapo.task.prepare import TaskConfig, prepare_task
    from openrlhf_tapo.task.questions import QuestionSetConfig

    config = TaskConfig(
        kb=KnowledgeBaseConfig(num_entities=10, seed=0),
        questions=QuestionSetConfig(num_eval=2, seed=0),
        model_family=family,
    )
    return prepare_task(root, config, progress=lambda _: None)


STOCK = {  # family -> transformers' processor and video processor, as a released checkpoint names them
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
}


def stock_processor(report: Report, family: str, model_dir: Path) -> None:
    """Where torchvision imports (a GPU install: vLLM needs it), save transformers' stock processor over the tiny
    model's image-only one, as a released checkpoint ships it (the torchvision image processor and a video
    processor): vLLM 0.29's own Qwen-VL code then loads what a user's checkpoint loads. Checked against the
    image-only (PIL) processor on one image: the same tokens, and how far the pixel values differ."""
    name = f"stock processor [{family}]"
    try:
        importlib.import_module("torchvision")
    except Exception as err:  # any failure to import is the reason to keep the image-only processor
        report.add("SKIP", name, f"torchvision does not import ({type(err).__name__}): the image-only one stays")
        return
    try:
        import transformers
        from PIL import Image

        from openrlhf_tapo.agent import protocol
        from openrlhf_tapo.task.tiny_model import CHAT_TEMPLATE, load_processor

        tiny = load_processor(model_dir)
        kept = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std")
        settings = {key: getattr(tiny.image_processor, key) for key in kept}
        processor_class, video_class = (getattr(transformers, cls) for cls in STOCK[family])
        stock = processor_class(
            image_processor=transformers.Qwen2VLImageProcessor(size=tiny.image_processor.size, **settings),
            tokenizer=tiny.tokenizer,
            video_processor=video_class(**settings),
            chat_template=CHAT_TEMPLATE,
        )
        stock.save_pretrained(model_dir)
        config_path = model_dir / "processor_config.json"
        config = json.loads(config_path.read_text())
        config.pop("auto_map", None)  # the image-only processor's remote code must not be chosen any more
        config_path.write_text(json.dumps(config, indent=2))
        loaded = transformers.AutoProcessor.from_pretrained(str(model_dir))
        text, image = [f"a {protocol.IMAGE_PLACEHOLDER} b"], Image.new("RGB", (150, 70), "orange")
        ours, theirs = (p(text=text, images=[image], return_tensors="pt") for p in (tiny, loaded))
        same_tokens = ours["input_ids"].tolist() == theirs["input_ids"].tolist()
        gap = float((ours["pixel_values"] - theirs["pixel_values"]).abs().max())
        report.add(
            "PASS" if type(loaded) is processor_class and same_tokens else "FAIL",
            name,
            f"AutoProcessor loads {type(loaded).__name__} ({type(loaded.image_processor).__name__}); same tokens as "
            f"the image-only processor: {same_tokens}; pixel values differ by at most {gap:.3g}",
        )
    except Exception as err:  # a failure here is the finding; the smoke goes on with what was saved
        report.add("FAIL", name, f"{type(err).__name__}: {err}")


def forward(report: Report, family: str, model_dir: Path, cuda: bool) -> None:
    import torch
    from PIL import Image

    from openrlhf_tapo.agent import protocol
    from openrlhf_tapo.task.tiny_model import load_tiny_vlm

    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    model, processor = load_tiny_vlm(model_dir, dtype=dtype)
    model.to(device)
    inputs = processor(
        text=[f"{protocol.IM_START}user\n{protocol.IMAGE_PLACEHOLDER}What city?{protocol.IM_END}\n"],
        images=[Image.new("RGB", (96, 64), "teal")],
        return_tensors="pt",
    ).to(device)
    with torch.no_grad():
        logits = model(**inputs).logits
    finite = bool(torch.isfinite(logits).all())
    report.add(
        "PASS" if finite else "FAIL",
        f"forward [{family}]",
        f"{type(model).__name__} on {device} ({str(dtype).removeprefix('torch.')}): logits {tuple(logits.shape)}, "
        + ("finite" if finite else "NOT finite"),
    )


def algorithms(report: Report, cuda: bool) -> None:
    if not cuda:
        report.add("SKIP", "algorithms", "needs a CUDA device (tests/test_algorithms_cuda.py)")
        return
    if importlib.util.find_spec("pytest") is None:
        report.add("SKIP", "algorithms", "needs pytest (pip install pytest) to run tests/test_algorithms_cuda.py")
        return
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_algorithms_cuda.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    report.add("PASS" if proc.returncode == 0 else "FAIL", "algorithms", f"tests/test_algorithms_cuda.py: {summary}")


def pixel_bytes(report: Report, family: str, paths, missing: list[str]) -> None:
    """One scripted rollout of the gold trace: image search (returns the entity's emblem), text search, answer."""
    if any(name.startswith("openrlhf") for name in missing):
        report.add("SKIP", f"pixel bytes [{family}]", "the agent's rollout needs OpenRLHF (its vlm_utils)")
        return
    from openrlhf_tapo.utils import cuda_stubs

    cuda_stubs.install()  # no-op where vLLM imports; its SamplingParams otherwise
    from vllm import SamplingParams

    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.agent.rollout import AgentExecutor
    from openrlhf_tapo.task.prepare import read_prompt_rows
    from openrlhf_tapo.task.questions import read_questions
    from openrlhf_tapo.task.tiny_model import load_processor
    from openrlhf_tapo.task.warm_start import scripted_traces

    processor = load_processor(paths.model_dir)
    row = read_prompt_rows(paths.prompts["train"])[0]
    gold = list(read_questions(paths.questions["train"])[0].gold_actions)
    executor = AgentExecutor(load_agent_config(paths.agent_config))
    (out,) = scripted_traces(executor, [row], [gold], processor, SamplingParams(max_tokens=64), 2048)
    pixels = out["mm_train_inputs"]["pixel_values"]
    tokens = sum(token == processor.image_token_id for token in out["observation_tokens"])
    images = int(out["mm_train_inputs"]["image_grid_thw"].shape[0])
    total = pixels.numel() * pixels.element_size()
    per_token = total / max(tokens, 1)
    patch = processor.image_processor.patch_size
    expected = 4 * 3 * 2 * patch * patch * pixels.element_size()  # 2 x 2 patches of 3 channels x 2 frames each
    ok = len(gold) == 3 and images >= 2 and per_token == expected
    report.add(
        "PASS" if ok else "FAIL",
        f"pixel bytes [{family}]",
        f"{len(gold)} turns, {images} images ({images - 1} from tools), {tokens} image tokens: {total} bytes of "
        f"{str(pixels.dtype).removeprefix('torch.')} pixel values per trajectory, {per_token:.0f} per image token "
        f"(expected {expected})",
    )


def evaluate_run(metrics: list[dict], used: list[int], total: int) -> list[tuple[str, str, str]]:
    """(status, check, detail) for the Ray job's checks, from its per-step metrics (tensorboard, `train/` dropped)
    and the device memory used, sampled during the job (bytes)."""
    results = []
    mismatch = sorted({key for step in metrics for key in step if key.endswith(PROMPT_LENGTH_METRIC)})
    if not mismatch:
        results.append(("FAIL", "prompt length", f"{PROMPT_LENGTH_METRIC} was not logged (no per-turn check ran)"))
    else:
        counts = {key: sum(step.get(key, 0.0) for step in metrics) for key in mismatch}
        bad = any(value != 0 for value in counts.values())
        results.append(("FAIL" if bad else "PASS", "prompt length", f"summed over the steps: {counts}"))
    kl = [step["vllm_kl"] for step in metrics if "vllm_kl" in step]
    if not kl:
        results.append(("FAIL", "vllm_kl", "not logged (the job ran without IS correction, so no rollout logprobs)"))
    else:
        small = all(math.isfinite(v) and abs(v) < KL_LIMIT for v in kl)
        results.append(
            ("PASS" if small else "FAIL", "vllm_kl", f"{', '.join(f'{v:.2e}' for v in kl)} (limit {KL_LIMIT})")
        )
    if not used:
        results.append(("FAIL", "memory after sleep", "no device memory samples"))
    else:
        # vLLM awake = above half the peak. Between the first and the last time it is awake (engine start-up and
        # the last step's generation), its sleep must have let usage fall below half the peak: while the models
        # load and while DeepSpeed trains. What follows the last generation (the job's end) does not count.
        peak = max(used)
        awake = [i for i, u in enumerate(used) if u > peak / 2]
        low = min(used[awake[0] : awake[-1] + 1])
        released = low <= peak / 2
        results.append(
            (
                "PASS" if released else "FAIL",
                "memory after sleep",
                f"peak {peak / 2**30:.1f} GiB, lowest between vLLM's first and last wake {low / 2**30:.1f} GiB, of "
                f"{total / 2**30:.1f} GiB" + ("" if released else ": vLLM's sleep did not release its memory"),
            )
        )
    payload = [step[MM_BYTES_METRIC] for step in metrics if MM_BYTES_METRIC in step]
    if payload and all(math.isfinite(v) and v > 0 for v in payload):
        results.append(("PASS", "job pixel bytes", f"{', '.join(f'{v:.0f}' for v in payload)} bytes per trajectory"))
    else:
        results.append(("FAIL", "job pixel bytes", f"{MM_BYTES_METRIC}: {payload or 'not logged'}"))
    stats = {key: [step[key] for step in metrics if key in step] for key in TAPO_STATS}
    ok = all(values and all(math.isfinite(v) for v in values) for values in stats.values())
    results.append(("PASS" if ok else "FAIL", "tapo stats", ", ".join(f"{k} {v}" for k, v in stats.items())))
    return results


class MemorySampler(threading.Thread):
    """Device memory in use (torch.cuda.mem_get_info: total - free, every process), every `every_s` seconds."""

    def __init__(self, every_s: float = 0.1):
        super().__init__(daemon=True)
        self.every_s, self.used, self.total = every_s, [], 0
        self._stop = threading.Event()

    def run(self):
        import torch

        while not self._stop.is_set():
            free, self.total = torch.cuda.mem_get_info(0)
            self.used.append(self.total - free)
            self._stop.wait(self.every_s)

    def stop(self):
        self._stop.set()
        self.join()


def ray_job(report: Report, family: str, paths, work: Path, timeout_s: int) -> None:
    """Two RL steps of train_tapo_ray.sh on a Ray head with 1 GPU, submitted by the script itself."""
    from openrlhf_tapo.runners.ray_subprocess import ray_metrics
    from openrlhf_tapo.utils.ray_head import ray_head

    data = work / "train.jsonl"  # two prompts, one per step (ROLLOUT_BATCH 1)
    data.write_text("".join(paths.prompts["train"].read_text().splitlines(keepends=True)[:2]))
    bin_dir = Path(sys.executable).parent  # `ray` and `python3` of this environment, for the script and its job
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO)}
    save = work / "exp"
    sizes = dict(NUM_NODES=1, GPUS_PER_NODE=1, VLLM_TP=1, ROLLOUT_BATCH=1, N_SAMPLES=2, TRAIN_BATCH=2,
                 ROLLOUT_MICRO_BATCH=1, TRAIN_MICRO_BATCH=1, MAX_LEN=2048, MAX_IMAGES=16, NUM_EPISODES=1,
                 SAVE_STEPS=-1)  # fmt: skip
    sampler = MemorySampler()
    started = time.time()
    with ray_head(shutil.which("ray", path=env["PATH"]) or "ray", os.cpu_count() or 8, 1, env) as (address, env):
        script_env = {
            **env,
            **{k: str(v) for k, v in sizes.items()},
            "RAY_ADDRESS": address,
            "MODEL_PATH": str(paths.model_dir),
            "DATASET_PATH": str(data),
            "AGENT_CONFIG": str(paths.agent_config),
            "RUN_NAME": f"smoke_{family}",
            "SAVE_PATH": str(save),
        }
        sampler.start()
        try:
            proc = subprocess.run(
                ["bash", str(REPO / "examples/scripts/train_tapo_ray.sh")],
                env=script_env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            rc, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            rc, output = None, f"{err.stdout or ''}{err.stderr or ''}"
        finally:
            sampler.stop()
    (work / "job.log").write_text(output if isinstance(output, str) else output.decode(errors="replace"))
    events = sorted({p.parent for p in (save / "runs").rglob("events.out.tfevents.*")}) if save.exists() else []
    metrics = ray_metrics(events[0]) if events else []
    steps = [m["step"] for m in metrics]
    ok = rc == 0 and len(steps) == 2
    why = "timed out" if rc is None else f"exit {rc}"
    report.add(
        "PASS" if ok else "FAIL",
        f"ray job [{family}]",
        f"{why} after {time.time() - started:.0f} s, steps logged {steps} (log: {work / 'job.log'})",
    )
    if metrics:
        for status, name, detail in evaluate_run(metrics, sampler.used, sampler.total):
            report.add(status, f"{name} [{family}]", detail)


RUN_CHECKS = ("prompt length", "vllm_kl", "memory after sleep", "job pixel bytes", "tapo stats")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_smoke.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="no CUDA: run everything else, skip the CUDA parts")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a new temporary one)")
    parser.add_argument("--families", nargs="+", default=["qwen2_5_vl", "qwen3_vl"], help="tiny model families")
    parser.add_argument("--job-timeout", type=int, default=240, help="seconds one Ray job may take (default 240)")
    parser.add_argument("--time-limit", type=int, default=570, help="seconds for the whole smoke (default 570)")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.time_limit
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_smoke_"))
    report = Report()
    print(f"GPU smoke in {out}", flush=True)
    cuda, missing = environment(report, args.dry_run)
    algorithms(report, cuda)
    for family in args.families:
        work = out / family
        try:
            paths = build_task(work / "task", family)
        except Exception as err:  # a failed build is a finding: report it and go on with the other family
            report.add("FAIL", f"tiny model [{family}]", f"{type(err).__name__}: {err}")
            continue
        report.add("PASS", f"tiny model [{family}]", f"task and tiny {family} built offline in {work / 'task'}")
        stock_processor(report, family, paths.model_dir)
        forward(report, family, paths.model_dir, cuda)
        pixel_bytes(report, family, paths, missing)
        reason = (
            "--dry-run" if args.dry_run
            else "no CUDA device" if not cuda
            else f"cannot import {', '.join(m.split()[0] for m in missing)}" if missing
            else None
        )  # fmt: skip
        if reason:
            for name in ("ray job", *RUN_CHECKS):
                report.add("SKIP", f"{name} [{family}]", f"{reason} (needs CUDA, vLLM, Ray, DeepSpeed, OpenRLHF)")
        elif deadline - time.monotonic() < 90:  # what a Ray job needs at least: start-up and two tiny steps
            for name in ("ray job", *RUN_CHECKS):
                report.add("SKIP", f"{name} [{family}]", f"--time-limit {args.time_limit} s reached")
        else:
            ray_job(report, family, paths, work, min(args.job_timeout, int(deadline - time.monotonic()) - 30))
    counts = {s: sum(line[0] == s for line in report.lines) for s in ("PASS", "FAIL", "SKIP")}
    print(f"GPU smoke: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped", flush=True)
    (out / "report.json").write_text(json.dumps(report.lines, indent=1))
    return 1 if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
