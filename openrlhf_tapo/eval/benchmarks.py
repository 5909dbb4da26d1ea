"""Readers of benchmark files into one sample type, so every benchmark runs through the same agent and reward.

Formats (`--format`, detected from the file when left out):

- `mmsearch_r1`: MMSearch-R1 / FVQA parquet (read by `agent.datasets.read_mmsearch_parquet`, as for training).
- `mmsearch`: MMSearch-style jsonl: `query`, `query_image` (optional), `gt_answer`, `alternative_gt_answers`.
- `infoseek`: InfoSeek-style jsonl: `question`, `answer` (str or list), `answer_eval` (list of strings; numeric
  questions may hold `{"range": [lo, hi]}` entries), `data_split`, and an image (`image`, `image_path`, or
  `image_id` found as `<image_root or data dir>/<image_id>.jpg|.JPEG|.jpeg|.png`).
- `simplevqa`: SimpleVQA-style jsonl: `image`, `question`, `answer`; scored by the agent's LLM judge.
- `jsonl`: the agent's training jsonl (`question`, `image`/`images`, `answer`, `candidates`;
  `agent.datasets.read_jsonl`).
- `prompts`: OpenRLHF prompt rows (`prompt`, `label`, `images`), as `agent.data` converts them and the bundled task
  writes them (`prompts_eval.jsonl`).

Images are given to the agent as the training data gives them (encoded bytes, paths or URLs) and decoded by the
same executor code. A record that cannot be read is an error naming the file, the line and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from openrlhf_tapo.agent.datasets import AgentSample, image_reference, read_jsonl, read_mmsearch_parquet
from openrlhf_tapo.agent.reward import parse_label
from openrlhf_tapo.utils.jsonl import iter_json_objects

FORMATS = ("mmsearch_r1", "mmsearch", "infoseek", "simplevqa", "jsonl", "prompts")
_IMAGE_EXTENSIONS = (".jpg", ".JPEG", ".jpeg", ".png", ".webp")


class BenchmarkFormatError(ValueError):
    """A benchmark file or record does not match its declared format."""


@dataclass
class EvalSample:
    """One benchmark question, format-independent."""

    id: str
    question: str
    answers: list[str]  # gold answer first, then accepted alternatives
    images: list[bytes | str] = field(default_factory=list)  # what the executor's image loader takes
    split: str = ""  # data_source / data_split / category, for per-split accuracy
    judge: bool = False  # scored by the LLM judge (SimpleVQA) rather than by exact match
    ranges: list[tuple[float, float]] = field(default_factory=list)  # InfoSeek numeric answers: accepted [lo, hi]

    @property
    def label(self) -> str:
        """The label the agent's reward reads (`reward.parse_label`)."""
        return json.dumps({"ground_truth": self.answers[0], "candidate_answers": self.answers[1:]}, ensure_ascii=False)


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | int | float):
        return [str(value)]
    return [str(v) for v in value if v is not None]


def _golds(*groups) -> list[str]:
    return [a for a in dict.fromkeys(a.strip() for g in groups for a in _as_list(g)) if a]


def _from_agent_sample(s: AgentSample, index: int) -> EvalSample:
    return EvalSample(str(index), s.question, _golds(s.answer, s.candidates), list(s.images), split=s.data_source)


def detect_format(path: str | Path) -> str:
    """The format of a benchmark file from its suffix and the keys of its first record."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return "mmsearch_r1"
    first = next(iter_json_objects(path, BenchmarkFormatError), None)
    if first is None:
        raise BenchmarkFormatError(f"{path}: empty file")
    keys = set(first[1])
    if "query" in keys and "gt_answer" in keys:
        return "mmsearch"
    if "prompt" in keys and "label" in keys:
        return "prompts"
    if "question" in keys and ({"answer_eval", "data_split", "image_id"} & keys):
        return "infoseek"
    if "question" in keys and "answer" in keys:
        return "jsonl"
    raise BenchmarkFormatError(
        f"{path}: cannot tell the format from the keys {sorted(keys)}; pass --format ({', '.join(FORMATS)})"
    )


def _image(ref, base_dirs: list[Path], where: str) -> bytes | str:
    if isinstance(ref, str) and not ref.startswith(("http://", "https://", "data:")):
        found = next((b / ref for b in base_dirs if (b / ref).is_file()), None)
        if found is not None:
            ref = str(found.resolve())
    try:
        return image_reference(ref, base_dirs[0], 0)
    except ValueError as e:
        raise BenchmarkFormatError(f"{where}: {e} (searched {[str(b) for b in base_dirs]})") from None


def _require(row: dict, keys: tuple[str, ...], where: str, fmt: str) -> None:
    missing = [k for k in keys if row.get(k) in (None, "")]
    if missing:
        raise BenchmarkFormatError(f"{where}: missing field(s) {missing} for --format {fmt} (has {sorted(row)})")


def _jsonl_sample(fmt: str, row: dict, sid: str, where: str, base_dirs: list[Path]) -> EvalSample:
    if fmt == "mmsearch":
        _require(row, ("query", "gt_answer"), where, fmt)
        image = row.get("query_image")
        return EvalSample(
            sid,
            str(row["query"]),
            _golds(row["gt_answer"], row.get("alternative_gt_answers")),
            [_image(image, base_dirs, where)] if image else [],
            split=str(row.get("area", row.get("subfield", ""))),
        )
    if fmt == "infoseek":
        _require(row, ("question", "answer"), where, fmt)
        image = row.get("image", row.get("image_path"))
        if image is None and row.get("image_id"):
            names = [f"{row['image_id']}{ext}" for ext in _IMAGE_EXTENSIONS]
            image = next((n for n in names for b in base_dirs if (b / n).is_file()), names[0])
        if image is None:
            raise BenchmarkFormatError(f"{where}: an InfoSeek record needs `image`, `image_path` or `image_id`")
        answer_eval = row.get("answer_eval") or []
        ranges = []
        for a in answer_eval:
            if isinstance(a, dict) and "range" in a:
                lo, hi = (float(x) for x in a["range"])
                ranges.append((min(lo, hi), max(lo, hi)))
        strings = [a for a in answer_eval if not isinstance(a, dict)]
        strings += [a["wikidata"] for a in answer_eval if isinstance(a, dict) and "wikidata" in a]
        return EvalSample(
            sid,
            str(row["question"]),
            _golds(row["answer"], strings),
            [_image(image, base_dirs, where)],
            split=str(row.get("data_split", "")),
            ranges=ranges,
        )
    if fmt == "simplevqa":
        _require(row, ("image", "question", "answer"), where, fmt)
        return EvalSample(
            sid,
            str(row["question"]),
            _golds(row["answer"]),
            [_image(row["image"], base_dirs, where)],
            split=str(row.get("category", row.get("language", ""))),
            judge=True,
        )
    # prompts: OpenRLHF prompt rows
    _require(row, ("prompt", "label"), where, fmt)
    try:
        label = parse_label(row["label"])
    except ValueError as e:
        raise BenchmarkFormatError(f"{where}: label: {e}") from None
    meta = json.loads(row["label"]) if isinstance(row["label"], str) and row["label"].startswith("{") else {}
    refs = row.get("images") or []
    refs = refs if isinstance(refs, list) else [refs]
    return EvalSample(
        str(meta.get("id", sid)),
        str(row["prompt"]),
        _golds(label.ground_truth, list(label.candidates)),
        [_image(r, base_dirs, where) for r in refs],
        split=str(row.get("datasource", meta.get("kind", ""))),
    )


def read_benchmark(path: str | Path, fmt: str | None = None, image_root: str | Path | None = None) -> list[EvalSample]:
    """Read a benchmark file of format `fmt` (one of FORMATS; detected when None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise BenchmarkFormatError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt in ("mmsearch_r1", "jsonl"):
        reader = read_mmsearch_parquet if fmt == "mmsearch_r1" else read_jsonl
        try:
            agent_samples, _ = reader(path, on_error="raise")
        except ValueError as e:
            raise BenchmarkFormatError(str(e)) from None
        samples = [_from_agent_sample(s, i) for i, s in enumerate(agent_samples)]
    else:
        base_dirs = ([Path(image_root)] if image_root else []) + [path.parent, path.parent / "images"]
        samples = [
            _jsonl_sample(fmt, row, str(row.get("id", row.get("data_id", lineno - 1))), f"{path}:{lineno}", base_dirs)
            for lineno, row in iter_json_objects(path, BenchmarkFormatError)
        ]
    if not samples:
        raise BenchmarkFormatError(f"{path}: no samples")
    for s in samples:
        if not s.answers:
            raise BenchmarkFormatError(f"{path}: sample {s.id} has no gold answer")
    return samples
