"""Read the scalar curves of a training run from what OpenRLHF (or our in-process loop) writes.

Three sources, all optional inside one run directory, merged key by key:

- tensorboard event files (`events.out.tfevents.*`, any depth): OpenRLHF's `TensorboardLogger` writes every entry
  of the trainer's status dict as `train/<key>` and eval results as `eval/<key>`;
- wandb offline runs (`wandb/offline-run-*/run-*.wandb`): the same dict logged through `WandbLogger`;
- jsonl metrics (`*.jsonl` whose lines are JSON objects of numbers): our in-process loop's per-step metrics. The
  step is taken from `step`, `global_step` or `train/global_step`, else the line number. Nested dicts are
  flattened with `/`. When some jsonl file name contains `metric`, only those are read (others hold samples).

Curves are then looked up by *metric*, each with an ordered list of candidate keys (`METRICS`): the first key a
run has wins, and the report says which key it used.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

Series = list[tuple[int, float]]

STEP_KEYS = ("step", "global_step", "train/global_step", "_step")


@dataclass(frozen=True)
class Metric:
    """A curve worth comparing, and the logging keys that hold it (first match wins, `train/` prefix optional)."""

    name: str
    title: str
    keys: tuple[str, ...]
    pattern: str | None = None  # regex fallback over the remaining keys, for loggers with their own prefixes


# Key names (checked against the installed code): OpenRLHF 0.11.2 `BasePPOTrainer._compute_rollout_stats` logs
# `rollout/reward_mean` and `rollout/response_length_mean`; `PPOActor.training_step` logs every `experience.info` entry
# (`reward`, `score` = the agent's correctness, `response_length`, and the agent's `extra_logs`: `tool_calls`,
# `exact_match`, `turns`, `calls/<tool>`, `errors/<kind>`, ...) plus `entropy_loss` when `--actor.entropy_coef` is set;
# the TensorboardLogger prefixes all of them with `train/`. Our TAPO stage adds `tapo/<stat>` info entries
# (adapter/stage/experience_stage.py); our in-process loop (adapter/inprocess/loop.py) also logs `accuracy`,
# `tool_call_rate` and `agent/<extra_log>` means.
METRICS: tuple[Metric, ...] = (
    Metric("reward", "reward", ("rollout/reward_mean", "reward", "reward_mean")),
    Metric(
        "accuracy",
        "accuracy (score)",
        ("accuracy", "score", "exact_match", "agent/exact_match", "acc", "eval/accuracy", "eval/acc"),
        pattern=r"(^|/)(acc|accuracy)(_mean)?$",
    ),
    Metric(
        "tool_call_rate",
        "trajectories with a tool call",
        ("tool_call_rate", "agent/tool_call_rate"),
    ),
    Metric(
        "tool_calls",
        "tool calls per trajectory",
        ("tool_calls", "agent/tool_calls", "tapo/tool_calls", "num_tool_calls"),
        pattern=r"tool_calls?(_mean)?$",
    ),
    Metric(
        "response_length",
        "response length (tokens)",
        ("rollout/response_length_mean", "response_length", "response_length_mean", "gen_len"),
    ),
    Metric("entropy", "entropy", ("entropy", "entropy_loss", "policy_entropy"), pattern=r"entropy"),
    Metric(
        "tapo_correctable_fraction",
        "failing trajectories correctable (TAPO's measure)",
        ("tapo/failing_traj_correctable_frac", "tapo/failing_calls_correctable_frac"),
    ),
    Metric(
        "tapo_corrected_fraction",
        "TAPO corrected fraction (failing tool calls)",
        ("tapo/failing_calls_corrected_frac", "tapo/failing_traj_corrected_frac", "tapo/corrected_frac"),
        pattern=r"tapo.*corrected_?(frac|fraction|rate)",
    ),
    Metric(
        "tapo_transferred_credit",
        "TAPO transferred credit (mean per corrected call)",
        ("tapo/mean_transferred_credit", "tapo/transferred_credit", "tapo/mean_advantage_change"),
        pattern=r"tapo.*(transfer|credit)",
    ),
)


@dataclass
class RunMetrics:
    """All scalar curves of one run: key -> [(step, value)] sorted by step, plus where they came from."""

    name: str
    path: Path
    series: dict[str, Series] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def add(self, key: str, step: int, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return
        self.series.setdefault(key, []).append((int(step), float(value)))

    def finish(self) -> None:
        # One value per step: the last one logged wins (a resumed run re-logs steps).
        for key, points in self.series.items():
            self.series[key] = sorted(dict(points).items())

    def resolve(self, metric: Metric) -> str | None:
        """The key holding `metric` in this run, or None."""
        for key in metric.keys:
            for candidate in (key, f"train/{key}"):
                if self.series.get(candidate):
                    return candidate
        if metric.pattern:
            regex = re.compile(metric.pattern)
            for key in sorted(self.series):
                if regex.search(key) and self.series[key]:
                    return key
        return None


def _flatten(obj: Mapping, prefix: str = "") -> Iterable[tuple[str, object]]:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}/")
        else:
            yield name, value


def read_jsonl_metrics(path: Path, run: RunMetrics) -> bool:
    """Add the numeric fields of a metrics jsonl; False when the file is not a metrics file (no numeric objects)."""
    found = False
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return found
            if not isinstance(record, dict):
                return found
            flat = dict(_flatten(record))
            step = next((flat[k] for k in STEP_KEYS if isinstance(flat.get(k), int | float)), lineno)
            for key, value in flat.items():
                if key not in STEP_KEYS and isinstance(value, int | float) and not isinstance(value, bool):
                    run.add(key, int(step), value)
                    found = True
    return found


def read_tensorboard(directory: Path, run: RunMetrics) -> None:
    """Add the scalars of every event file directly inside `directory` (tensorboard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in tags.get("scalars", []):
        for event in acc.Scalars(tag):
            run.add(tag, event.step, event.value)
    # torch's SummaryWriter writes scalars as scalar events; newer tf.summary writes them as rank-0 tensors.
    for tag in tags.get("tensors", []):
        for event in acc.Tensors(tag):
            proto = event.tensor_proto
            values = list(proto.float_val) or list(proto.double_val)
            if not values and proto.tensor_content and proto.dtype == 1:  # DT_FLOAT
                values = list(struct.unpack(f"<{len(proto.tensor_content) // 4}f", proto.tensor_content))
            if len(values) == 1:
                run.add(tag, event.step, values[0])


# The wandb transaction log (`.wandb`) is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks
# (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last), each record a `wandb.proto` Record.
_WANDB_HEADER = 7
_WANDB_BLOCK = 32768


def _wandb_records(data: bytes) -> Iterable[bytes]:
    pos, pending = _WANDB_HEADER, b""
    while pos + 7 <= len(data):
        block_left = _WANDB_BLOCK - ((pos - _WANDB_HEADER) % _WANDB_BLOCK)
        if block_left < 7:
            pos += block_left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero padding
            pos += block_left - 7
            continue
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def read_wandb_offline(path: Path, run: RunMetrics) -> None:
    """Add the history of one offline `.wandb` file (the step is `train/global_step` when logged, else `_step`)."""
    from wandb.proto import wandb_internal_pb2

    for raw in _wandb_records(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(raw)
        except Exception:  # a torn last record of a crashed run
            continue
        if record.WhichOneof("record_type") != "history":
            continue
        values: dict[str, object] = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            try:
                values[key] = json.loads(item.value_json)
            except json.JSONDecodeError:
                continue
        step = next((values[k] for k in STEP_KEYS if isinstance(values.get(k), int | float)), None)
        if step is None:
            step = record.history.step.num
        for key, value in values.items():
            if key not in STEP_KEYS and not key.startswith("_") and isinstance(value, int | float):
                run.add(key, int(step), value)


def load_run(path: str | Path, name: str | None = None) -> RunMetrics:
    """Read every metrics source under a run directory (or a single event/jsonl file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run directory {path} does not exist")
    run = RunMetrics(name=name or path.name, path=path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    event_dirs = sorted({p.parent for p in files if p.name.startswith("events.out.tfevents")})
    for directory in event_dirs:
        read_tensorboard(directory, run)
        run.sources.append(f"tensorboard:{directory.relative_to(path) if path.is_dir() else directory}")
    # A run directory may also hold per-sample jsonl (rollouts, eval records): prefer files named like metrics.
    jsonl = [p for p in files if p.suffix == ".jsonl"]
    metric_files = {p for p in jsonl if "metric" in p.name} or set(jsonl)
    for file in files:
        if file.suffix == ".wandb" and file.parent.name.startswith("offline-run"):
            read_wandb_offline(file, run)
            run.sources.append(f"wandb:{file.name}")
        elif file in metric_files and read_jsonl_metrics(file, run):
            run.sources.append(f"jsonl:{file.relative_to(path) if path.is_dir() else file.name}")
    run.finish()
    if not run.series:
        raise ValueError(
            f"no metrics found under {path}: expected tensorboard event files (--logger.tensorboard_dir), "
            "a wandb offline run (WANDB_MODE=offline) or a metrics .jsonl"
        )
    return run
