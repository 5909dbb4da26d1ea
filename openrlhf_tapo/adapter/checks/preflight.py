"""Checks of a launch's inputs that can fail cheaply, run by the launcher before Ray starts (also with --dry-run).

A GPU job that loads its models and vLLM engines before reading the first prompt or searching once would otherwise
find a missing file or an unset API key only after minutes on a cluster allocation. `preflight(args)` checks, on
OpenRLHF's parsed args with ours:

- the prompt data (`--data.prompt_dataset`): every local file exists; EVERY row has the keys OpenRLHF reads
  (`--data.input_key`, `--data.label_key`, `--data.image_key`), at most `--data.max_images_per_prompt` images, and,
  for a vision model, fits `--data.max_len` with its images (each image's tokens from its header size alone, by the
  processor's resize rules, checks/mm_budget.py; the text by the model's tokenizer when one is on disk). The first
  rows' images are decoded in full. Bad rows are reported with their line numbers (how many, the first few);
- the agent's tools (`--agent.config`): the YAML builds its ToolRunner, so a local index must load and a web
  provider's key variable must be set (only the variable's name is ever printed);
- the image limits: the agent's `tools.max_images_per_trajectory` within `--data.max_images_per_prompt` (vLLM's
  per-request limit: a request over it is rejected and fails the step), which must not be 0 for a vision model, and
  no dynamic batching or ring attention with a vision model (both turn on packing, which breaks M-RoPE silently);
- the model (`--actor.model_name_or_path`, `--ref.model_name_or_path`): a directory with config.json or a hub id;
- the output paths (`--ckpt.output_dir`, `--ckpt.path`, `--logger.tensorboard_dir`): creatable and writable.

Every failure is collected (not only the first) and named with its flag or file and the fix. What may work but
probably will not (a step's multimodal payload against Ray's object store) is returned as a warning.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from openrlhf_tapo.adapter.checks import mm_budget

ROWS_DECODED = 8  # rows from the head of each prompt file whose images are decoded in full (a truncated file)
BAD_ROWS_SHOWN = 5  # bad rows named per kind of problem; the count covers all
PARQUET_BATCH = 4096
DATA_FILE_EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet", ".arrow")  # what OpenRLHF loads as a local file
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONVERT_HINT = "convert MMSearch-R1/FVQA parquet or jsonl with `python -m openrlhf_tapo.agent.data IN OUT.jsonl`"


class PreflightError(ValueError):
    """One or more inputs of a launch are unusable; the message lists each with its flag and fix."""

    def __init__(self, problems: list[str]):
        super().__init__("preflight found " + "\n  - ".join([f"{len(problems)} problem(s):", *problems]))
        self.problems = problems


def _rows(path: Path) -> Iterator[tuple[str, object]]:
    """("line N" / "row N", row) for every row of a jsonl / json / parquet file (other formats: none read)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH):
            for row in batch.to_pylist():
                yield f"row {number}", row
                number += 1
        return
    if suffix not in (".jsonl", ".json"):
        return
    with path.open(encoding="utf-8") as f:
        head = f.read(1 << 16).lstrip()
    if head.startswith("["):  # a .json file holding one list
        for number, row in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            yield f"row {number}", row
        return
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"line {number} is not JSON ({err.msg})") from None


def _image_refs(row: dict, data) -> list:
    refs = row.get(data.image_key) if data.image_key else None
    return [] if refs is None else refs if isinstance(refs, list) else [refs]


def _row_problem(row, data, decode: bool) -> str | None:
    """What makes `row` unusable for OpenRLHF's loader; its images are decoded in full when `decode`."""
    from openrlhf_tapo.agent.datasets import image_reference

    if not isinstance(row, dict):
        return "is not an object"
    prompt = row.get(data.input_key)
    if not isinstance(prompt, str | list) or not prompt:
        return f"has no prompt under --data.input_key {data.input_key!r} (keys: {', '.join(sorted(row))})"
    if data.label_key and data.label_key not in row:
        return f"has no label under --data.label_key {data.label_key!r} (keys: {', '.join(sorted(row))})"
    for k, ref in enumerate(_image_refs(row, data) if decode else []):
        try:
            image_reference(ref, Path.cwd(), k)  # OpenRLHF opens relative paths from the working directory
        except ValueError as err:
            shown = f" {ref}" if isinstance(ref, str) and len(ref) < 256 else ""
            return f"--data.image_key {data.image_key!r}: image {k}{shown} is unreadable ({err})"
    return None


def image_size(ref) -> tuple[int, int] | None:
    """(width, height) of an image reference from its header alone (PIL opens lazily); None for an http(s) URL.
    Raises ValueError for anything unreadable."""
    from PIL import Image, UnidentifiedImageError

    from openrlhf_tapo.search.images import decode_base64_image

    if isinstance(ref, dict) and isinstance(ref.get("bytes"), str):
        ref = ref["bytes"]
    if not isinstance(ref, str) or not ref:
        raise ValueError("not a path, URL or base64 image")
    if ref.startswith(("http://", "https://")):
        return None
    encoded = decode_base64_image(ref)  # raw base64 or a data URI first, as agent/datasets.py reads a reference
    try:
        # a path: relative ones from the working directory, as OpenRLHF opens them
        with Image.open(io.BytesIO(encoded) if encoded is not None else ref) as image:
            return image.size
    except (OSError, ValueError, UnidentifiedImageError) as err:
        shown = ref if len(ref) < 256 else ref[:40] + "..."
        raise ValueError(f"{shown} is unreadable ({type(err).__name__})") from None


@dataclass
class _Scan:
    """What the scan of one prompt file found: bad rows per kind, and the question images' largest cost."""

    bad: dict[str, list[str]] = field(default_factory=dict)  # kind -> "line N: detail", in file order
    rows: list[tuple[str, str, int, int]] = field(default_factory=list)  # (where, text, images, image tokens)
    max_images: int = 0
    max_image_tokens: int = 0

    def add(self, kind: str, where: str, detail: str) -> None:
        self.bad.setdefault(kind, []).append(f"{where}: {detail}")


def _scan_file(path: Path, data, spec: mm_budget.VisionSpec | None) -> _Scan:
    scan = _Scan()
    limit = getattr(data, "max_images_per_prompt", 0)
    for index, (where, row) in enumerate(_rows(path)):
        problem = _row_problem(row, data, decode=index < ROWS_DECODED)
        if problem:
            scan.add("unusable", where, problem)
            continue
        refs = _image_refs(row, data)
        if spec is not None and len(refs) > limit:
            scan.add(f"hold more images than --data.max_images_per_prompt {limit}", where, f"{len(refs)} images")
        tokens = 0
        for k, ref in enumerate(refs):
            try:
                size = image_size(ref)
            except ValueError as err:
                scan.add("unusable", where, f"--data.image_key {data.image_key!r}: image {k} {err}")
                break
            if spec is not None and size is not None:
                tokens += spec.image_tokens(*size)
        else:  # every image readable: the row's cost
            prompt = row[data.input_key]
            scan.rows.append((where, prompt if isinstance(prompt, str) else "", len(refs), tokens))
            scan.max_images = max(scan.max_images, len(refs))
            scan.max_image_tokens = max(scan.max_image_tokens, tokens)
    return scan


@dataclass
class _PromptCost:
    """Tokens of the agent's first prompt beyond the question and its image pads (system turn, tools block, image
    labels), measured once with the model's tokenizer."""

    tokenizer: object
    fixed: int = 0
    per_image: int = 0

    def question_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)  # the Rust tokenizer: the same ids, 10x faster
        if backend is not None:
            return [len(encoding.ids) for encoding in backend.encode_batch(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _prompt_cost(model: str | None, agent) -> _PromptCost | None:
    """None when no tokenizer of `model` is on this machine (a hub id not downloaded): text is then not counted."""
    if not model:
        return None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True, trust_remote_code=True)
    except Exception:  # any failure to load means the same: no tokenizer here
        return None
    if not tokenizer("a", add_special_tokens=False)["input_ids"]:  # built empty from a folder without its files
        return None
    cost = _PromptCost(tokenizer)
    if agent is not None:
        from openrlhf_tapo.agent import protocol

        config, schemas = agent
        instructions = config.instructions or protocol.DEFAULT_INSTRUCTIONS
        shown = schemas if config.tools_block else []
        none, one = cost.question_tokens([protocol.build_prompt("", n, shown, instructions) for n in (0, 1)])
        cost.fixed, cost.per_image = none, one - none - 1  # the one image pad is counted with the image's tokens
    return cost


def _too_long(scan: _Scan, cost: _PromptCost | None, budget: int) -> None:
    text_tokens = cost.question_tokens([text for _, text, _, _ in scan.rows]) if cost else [0] * len(scan.rows)
    for (where, _, images, image_tokens), text in zip(scan.rows, text_tokens, strict=True):
        total = text + image_tokens + (cost.fixed + images * cost.per_image if cost else 0)
        if total > budget:
            scan.add("do not fit", where, f"{total} tokens, {image_tokens} of them image tokens")


def _report(path: Path, scan: _Scan, data, budget: int, counted: str) -> list[str]:
    fixes = {
        "unusable": CONVERT_HINT,
        "do not fit": "downscale the question images (`python -m openrlhf_tapo.agent.data IN OUT.jsonl "
        "--max-pixels N`), raise --data.max_len, or leave the rows out",
    }
    problems = []
    for kind, rows in scan.bad.items():
        what = kind
        if kind == "do not fit":
            what = f"do not fit --data.max_len {data.max_len} ({counted}; budget {budget} tokens)"
        shown = "; ".join(rows[:BAD_ROWS_SHOWN]) + ("; ..." if len(rows) > BAD_ROWS_SHOWN else "")
        fix = fixes.get(kind, "raise --data.max_images_per_prompt or leave the rows out")
        problems.append(f"--data.prompt_dataset {path}: {len(rows)} row(s) {what}: {shown}. Fix: {fix}")
    return problems


def check_prompt_data(data, model: str | None = None, agent=None) -> tuple[list[str], _Scan | None]:
    """(problems, the scan of the last local prompt file). `model`: --actor.model_name_or_path (a vision model's
    rows are checked against --data.max_len); `agent`: (AgentConfig, tool schemas), for the prompt's size."""
    problems, scan = [], None
    spec = mm_budget.vision_spec(model)
    cost = _prompt_cost(model, agent) if spec is not None else None
    min_turn = agent[0].min_tokens_per_turn if agent is not None else 0
    budget = getattr(data, "max_len", 0) - min_turn
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
            scan = _scan_file(path, data, spec)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            problems.append(f"--data.prompt_dataset {path}: unreadable ({err}); {CONVERT_HINT}")
            continue
        if not scan.rows and not scan.bad and path.suffix.lower() in (".jsonl", ".json", ".parquet"):
            problems.append(f"--data.prompt_dataset {path}: no rows")
        if spec is not None and budget > 0:
            _too_long(scan, cost, budget)
        counted = "prompt text and image tokens" if cost else "image tokens only: no tokenizer of the model here"
        if cost and agent is not None:
            counted += " with the agent's system prompt"
        problems += _report(path, scan, data, budget, counted)
    return problems, scan


def load_agent(config_path: str | None) -> tuple[list[str], tuple | None]:
    """(problems, (AgentConfig, tool schemas)): the agent's tools built as a rollout worker will build them (index
    loaded, web key read) and closed again. ([], None) without --agent.config."""
    if config_path is None:
        return [], None
    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.tools.registry import build_tool_runner

    try:
        config = load_agent_config(config_path)
        runner = build_tool_runner(config.tools)
    except (OSError, ValueError, ImportError, AttributeError) as err:
        return [
            f"--agent.config {config_path}: its tools cannot be built: {err}. Set tools.backend in the YAML: "
            "`local` with index_dir (python -m openrlhf_tapo.cli.build_index), `http` with url (python -m "
            "openrlhf_tapo.cli.serve_search), or `serper`/`serpapi` with the key in the environment (docs/cluster.md)"
        ], None
    schemas = runner.schemas()
    asyncio.run(runner.close())
    return [], (config, schemas)


def check_agent_tools(config_path: str | None) -> list[str]:
    return load_agent(config_path)[0]


def check_image_limits(args, agent_config, vision: bool) -> list[str]:
    """vLLM rejects (and fails the whole step for) a request with more images than `--data.max_images_per_prompt`;
    a vision model with 0 has no image limit set at all, and packing (which dynamic batching and ring attention
    turn on) drops the M-RoPE positions of a vision model without an error."""
    limit = args.data.max_images_per_prompt
    problems = []
    if agent_config is not None and limit > 0 and agent_config.tools.max_images_per_trajectory > limit:
        allowed = agent_config.tools.max_images_per_trajectory
        problems.append(
            f"the agent allows tools.max_images_per_trajectory {allowed} images (--agent.config {args.agent.config})"
            f" but vLLM accepts --data.max_images_per_prompt {limit} per request: a trajectory with more would be "
            f"rejected and fail the step. Raise --data.max_images_per_prompt to {allowed} (MAX_IMAGES in "
            f"examples/scripts) or lower tools.max_images_per_trajectory to {limit}"
        )
    if not vision:
        return problems
    if limit == 0:
        wanted = agent_config.tools.max_images_per_trajectory if agent_config is not None else "the images a prompt"
        problems.append(
            f"--actor.model_name_or_path {args.actor.model_name_or_path} is a vision model but "
            f"--data.max_images_per_prompt is 0 (text only): vLLM would get no image limit and re-expand the image "
            f"pads. Set --data.max_images_per_prompt to {wanted} (MAX_IMAGES in examples/scripts; the agent's "
            "tools.max_images_per_trajectory)"
        )
    for flag, on in (
        ("--train.dynamic_batch_enable", args.train.dynamic_batch_enable),
        (f"--ds.ring_attn_size {args.ds.ring_attn_size}", args.ds.ring_attn_size > 1),
    ):
        if on:
            problems.append(
                f"{flag} with a vision model (--data.max_images_per_prompt {limit}): it turns on sample packing, "
                "whose 1-D position_ids break Qwen-VL's M-RoPE without any error. Remove it"
            )
    return problems


def payload_warnings(args, agent_config, spec, scan) -> list[str]:
    """The step's worst-case multimodal payload against the object store Ray gives this machine by default."""
    if spec is None or agent_config is None:
        return []
    from openrlhf_tapo.adapter.seam.inject import trainer_compute_dtype

    dtype = trainer_compute_dtype(args)
    question_images = scan.max_images if scan is not None else 1
    question_tokens = scan.max_image_tokens if scan is not None else spec.image_tokens(*_side(spec.max_pixels))
    estimate = mm_budget.estimate_payload(
        spec,
        dtype,
        agent_config.tools,
        agent_config.max_turns,
        args.data.max_images_per_prompt,
        question_images,
        question_tokens,
        args.rollout.batch_size * args.rollout.n_samples_per_prompt,
    )
    warning = mm_budget.payload_warning(estimate, dtype, *mm_budget.object_store_bytes())
    return [warning] if warning else []


def _side(pixels: int) -> tuple[int, int]:
    side = math.isqrt(pixels)
    return side, side


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


def preflight(args) -> list[str]:
    """Raise PreflightError listing every problem found in `args` (OpenRLHF's parsed args with ours); return the
    warnings."""
    problems, agent = load_agent(args.agent.config)
    agent_config = agent[0] if agent is not None else None
    spec = mm_budget.vision_spec(args.actor.model_name_or_path)
    found, scan = check_prompt_data(args.data, args.actor.model_name_or_path, agent)
    problems = found + problems
    problems += check_image_limits(args, agent_config, spec is not None)
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
    return payload_warnings(args, agent_config, spec, scan)
