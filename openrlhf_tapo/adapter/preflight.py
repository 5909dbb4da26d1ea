"""Checks of a launch's inputs that can fail cheaply, run by the launcher before Ray starts (also with --dry-run).

A GPU job that loads its models and vLLM engines before reading the first prompt or searching once would otherwise
find a missing file or an unset API key only after minutes on a cluster allocation. `preflight(args)` checks, on
OpenRLHF's parsed args with ours:

- the prompt data (`--data.prompt_dataset`): every local file exists, and its first rows have the keys OpenRLHF
  reads (`--data.input_key`, `--data.label_key`, `--data.image_key`) with images that open;
- the agent's tools (`--agent.config`): the YAML builds its ToolRunner, so a local index must load and a web
  provider's key variable must be set (only the variable's name is ever printed);
- the model (`--actor.model_name_or_path`, `--ref.model_name_or_path`): a directory with config.json or a hub id;
- the output paths (`--ckpt.output_dir`, `--ckpt.path`, `--logger.tensorboard_dir`): creatable and writable.

Every failure is collected (not only the first) and named with its flag or file and the fix.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

ROWS_CHECKED = 8  # rows read from the head of each prompt file: enough to catch a wrong layout, fast on any size
DATA_FILE_EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet", ".arrow")  # what OpenRLHF loads as a local file
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONVERT_HINT = "convert MMSearch-R1/FVQA parquet or jsonl with `python -m openrlhf_tapo.agent.data IN OUT.jsonl`"


class PreflightError(ValueError):
    """One or more inputs of a launch are unusable; the message lists each with its flag and fix."""

    def __init__(self, problems: list[str]):
        super().__init__("preflight found " + "\n  - ".join([f"{len(problems)} problem(s):", *problems]))
        self.problems = problems


def _head_rows(path: Path, count: int) -> list:
    """The first `count` rows of a jsonl / json / parquet file (other formats: none read)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=count), None)
        return [] if batch is None else batch.to_pylist()
    if suffix not in (".jsonl", ".json"):
        return []
    with path.open(encoding="utf-8") as f:
        head = f.read(1 << 16).lstrip()
    if head.startswith("["):  # a .json file holding one list
        return json.loads(path.read_text(encoding="utf-8"))[:count]
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if len(rows) == count:
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"line {number} is not JSON ({err.msg})") from None
    return rows


def _row_problem(row, data) -> str | None:
    from openrlhf_tapo.agent.datasets import image_reference

    if not isinstance(row, dict):
        return "is not an object"
    prompt = row.get(data.input_key)
    if not isinstance(prompt, str | list) or not prompt:
        return f"has no prompt under --data.input_key {data.input_key!r} (keys: {', '.join(sorted(row))})"
    if data.label_key and data.label_key not in row:
        return f"has no label under --data.label_key {data.label_key!r} (keys: {', '.join(sorted(row))})"
    refs = row.get(data.image_key) if data.image_key else None
    for k, ref in enumerate([] if refs is None else refs if isinstance(refs, list) else [refs]):
        try:
            image_reference(ref, Path.cwd(), k)  # OpenRLHF opens relative paths from the working directory
        except ValueError as err:
            shown = f" {ref}" if isinstance(ref, str) and len(ref) < 256 else ""
            return f"--data.image_key {data.image_key!r}: image {k}{shown} is unreadable ({err})"
    return None


def check_prompt_data(data) -> list[str]:
    problems = []
    for entry in str(data.prompt_dataset or "").split(","):
        path = Path(entry.split("@")[0].strip()).expanduser()
        if not str(path) or str(path) == ".":
            problems.append(f"--data.prompt_dataset is not set; {CONVERT_HINT}")
            continue
        if not path.exists():
            if path.suffix.lower() in DATA_FILE_EXTENSIONS or path.is_absolute() or not HUB_ID.match(str(path)):
                problems.append(f"--data.prompt_dataset {path}: no such file; {CONVERT_HINT}")
            continue  # a hub dataset id: OpenRLHF downloads it
        if path.is_dir():
            continue
        try:
            rows = _head_rows(path, ROWS_CHECKED)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            problems.append(f"--data.prompt_dataset {path}: unreadable ({err}); {CONVERT_HINT}")
            continue
        if not rows and path.suffix.lower() in (".jsonl", ".json", ".parquet"):
            problems.append(f"--data.prompt_dataset {path}: no rows")
        for index, row in enumerate(rows):
            problem = _row_problem(row, data)
            if problem:
                problems.append(f"--data.prompt_dataset {path}: row {index} {problem}; {CONVERT_HINT}")
                break
    return problems


def check_agent_tools(config_path: str | None) -> list[str]:
    """Build the agent's tools as a rollout worker will (index loaded, web key read) and close them again."""
    if config_path is None:
        return []
    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.tools.registry import build_tool_runner

    try:
        runner = build_tool_runner(load_agent_config(config_path).tools)
    except (OSError, ValueError, ImportError, AttributeError) as err:
        return [
            f"--agent.config {config_path}: its tools cannot be built: {err}. Set tools.backend in the YAML: "
            "`local` with index_dir (python -m openrlhf_tapo.cli.build_index), `http` with url (python -m "
            "openrlhf_tapo.cli.serve_search), or `serper`/`serpapi` with the key in the environment (docs/cluster.md)"
        ]
    asyncio.run(runner.close())
    return []


def check_model(flag: str, path: str | None) -> list[str]:
    if not path:
        return [] if flag != "--actor.model_name_or_path" else [f"{flag} is not set"]
    local = Path(path).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            return []
        return [f"{flag} {path}: a directory without config.json (not a Hugging Face model folder)"]
    if local.exists() or path.startswith(("/", ".", "~")) or not HUB_ID.match(path):
        return [
            f"{flag} {path}: neither a local model directory (with config.json) nor a Hugging Face hub id "
            "(org/name, e.g. Qwen/Qwen2.5-VL-7B-Instruct)"
        ]
    return []


def check_writable(flag: str, path: str | None) -> list[str]:
    """`path` can be created or written: it is a writable directory, or its nearest existing parent is one."""
    if not path:
        return []
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return [f"{flag} {path}: {existing} is a file, not a directory"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{flag} {path}: {existing} is not writable; choose a directory you can write to"]
    return []


def preflight(args) -> None:
    """Raise PreflightError listing every problem found in `args` (OpenRLHF's parsed args with ours)."""
    problems = check_prompt_data(args.data)
    problems += check_agent_tools(args.agent.config)
    problems += check_model("--actor.model_name_or_path", args.actor.model_name_or_path)
    problems += check_model("--ref.model_name_or_path", getattr(args.ref, "model_name_or_path", None))
    for flag, path in (
        ("--ckpt.output_dir", args.ckpt.output_dir),
        ("--ckpt.path", args.ckpt.path),
        ("--logger.tensorboard_dir", args.logger.tensorboard_dir),
    ):
        problems += check_writable(flag, path)
    if problems:
        raise PreflightError(problems)
