"""Question datasets for the search agent read into `AgentSample`s: MMSearch-R1 / FVQA parquet and a plain jsonl.

- MMSearch-R1 parquet (FVQA training format): `prompt` (chat list; the last user message is the question),
  `images` ([{"bytes": ..., "path": ...}]), `reward_model` ({"ground_truth", "candidate_answers" (a JSON list
  string), "style"}), `data_source`, `image_urls` (optional).
- jsonl, one object per line: `question`, an image as `image` or a list as `images` (each a file path relative to
  the jsonl file or absolute, an http(s) URL, a base64 string / data URI, or {"bytes": base64}), `answer`, optional
  `candidates` (list of aliases), `data_source`, `image_urls`.

A row that cannot be read (missing question or answer, an image that does not decode, invalid UTF-8 or JSON, ...)
raises `DatasetRowError` naming the file, the row index and the field; with `on_error="skip"` the row is left out
AND reported (returned in the error list and logged), never dropped silently. A file that cannot be read at all (not
parquet, truncated, a required column missing, an unknown extension) raises `DatasetFileError` naming the file.
`agent/data.py` converts the samples to OpenRLHF's prompt rows; evaluation reads benchmarks with the same readers.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from openrlhf_tapo.search.images import decode_base64_image

logger = logging.getLogger(__name__)


class DatasetRowError(ValueError):
    def __init__(self, source: str, index: int, message: str):
        super().__init__(f"{source}: row {index}: {message}")
        self.source, self.index, self.reason = source, index, message


class DatasetFileError(ValueError):
    """A dataset file that cannot be read at all (not a parquet file, truncated, a required column missing)."""

    def __init__(self, source: str, message: str):
        super().__init__(f"{source}: {message}")
        self.source, self.reason = source, message


@dataclass
class AgentSample:
    """One question. `images` holds raw encoded bytes (decoded and checked) or http(s) URLs."""

    question: str
    answer: str
    images: list[bytes | str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    data_source: str = "default"
    image_urls: list[str] = field(default_factory=list)
    index: int = -1

    def label(self) -> str:
        return json.dumps({"ground_truth": self.answer, "candidate_answers": self.candidates}, ensure_ascii=False)


def _check_image(data: bytes) -> bytes:
    """The bytes, after checking they decode fully (a truncated file passes `verify` but not `load`)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as err:
        raise ValueError(f"image does not decode ({type(err).__name__}: {err})") from None
    return data


def _text(value, what: str) -> str:
    if value is None:
        raise ValueError(f"{what} is missing")
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value.strip()


def _str_list(value, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, an integer of over 4,300 digits, nesting too deep
            raise ValueError(f"{what} is not a JSON list: {value[:80]!r}") from None
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return list(value)


# ---------------------------------------------------------------------------------------------------- MMSearch-R1


def _question_from_chat(prompt) -> str:
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if isinstance(prompt, str):
        return _text(prompt.replace("<image>", ""), "prompt")
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("prompt must be a non-empty chat list")
    users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ValueError("prompt has no user message")
    content = users[-1].get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return _text(content.replace("<image>", "") if isinstance(content, str) else content, "prompt user content")


def _mmsearch_row(row: dict) -> AgentSample:
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, dict):
        raise ValueError("reward_model must be a mapping with ground_truth")
    images = row.get("images")
    if hasattr(images, "tolist"):
        images = images.tolist()
    encoded = []
    for k, item in enumerate(images or []):
        data = item.get("bytes") if isinstance(item, dict) else item
        if not isinstance(data, bytes | bytearray):
            raise ValueError(f"images[{k}] has no bytes")
        try:
            encoded.append(_check_image(bytes(data)))
        except ValueError as err:
            raise ValueError(f"images[{k}]: {err}") from None
    return AgentSample(
        question=_question_from_chat(row.get("prompt")),
        answer=_text(reward_model.get("ground_truth"), "reward_model.ground_truth"),
        images=encoded,
        candidates=_str_list(reward_model.get("candidate_answers"), "reward_model.candidate_answers"),
        data_source=str(row.get("data_source") or "default"),
        image_urls=_str_list(row.get("image_urls"), "image_urls"),
    )


Rows = tuple[list[AgentSample], list[DatasetRowError]]  # samples read, rows left out (on_error="skip")


MMSEARCH_COLUMNS = ("prompt", "images", "reward_model")


def read_mmsearch_parquet(path: str | Path, on_error: str = "raise") -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(path))
    except (pa.ArrowException, OSError) as err:
        raise DatasetFileError(str(path), f"not a readable parquet file ({type(err).__name__}: {err})") from None
    # A missing `images` column would silently make every question text-only: refused, like the other columns.
    missing = [c for c in MMSEARCH_COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetFileError(
            str(path),
            f"missing column(s) {', '.join(missing)}; the MMSearch-R1 layout needs {', '.join(MMSEARCH_COLUMNS)} "
            f"(found: {', '.join(table.column_names) or 'none'}); text-only rows have an empty images list",
        )
    return _collect(str(path), table.to_pylist(), _mmsearch_row, on_error)


# ---------------------------------------------------------------------------------------------------------- jsonl


def image_reference(ref, base_dir: Path, k: int) -> bytes | str:
    """Image `k` of a jsonl row as checked image bytes, or an http(s) URL left as is. `ref` is a path (relative to
    `base_dir`), a URL, a data URI, a base64 string or `{"bytes": base64}`; anything else raises ValueError."""
    if isinstance(ref, dict) and "bytes" in ref:
        ref = ref["bytes"]
        if not isinstance(ref, str):
            raise ValueError(f"image {k}: 'bytes' must be a base64 string in jsonl")
        return _check_image(_b64(ref, k))
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"image {k} must be a path, URL, base64 string or {{'bytes': base64}}")
    if ref.startswith(("http://", "https://")):
        return ref
    if ref.startswith("data:image"):
        return _check_image(_b64(ref.split(",", 1)[-1], k))
    data = decode_base64_image(ref)  # raw base64 first: as a path it is "File name too long"
    if data is not None:
        return _check_image(data)
    try:
        path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
        is_file = path.is_file()
    except (OSError, ValueError) as err:  # a name too long for the file system, a NUL byte
        raise ValueError(
            f"image {k}: neither base64 image bytes nor a usable file path ({type(err).__name__})"
        ) from None
    if is_file:
        return _check_image(path.read_bytes())
    if len(ref) > 256:
        return _check_image(_b64(ref, k))
    raise ValueError(f"image {k}: file {str(path)!r} does not exist")


def _b64(text: str, k: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"image {k}: not valid base64") from None


def _jsonl_row(row: dict, base_dir: Path) -> AgentSample:
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    refs = row.get("images", row.get("image"))
    refs = [] if refs is None else refs if isinstance(refs, list) else [refs]
    return AgentSample(
        question=_text(row.get("question"), "question").replace("<image>", "").strip(),
        answer=_text(row.get("answer"), "answer"),
        images=[image_reference(ref, base_dir, k) for k, ref in enumerate(refs)],
        candidates=_str_list(row.get("candidates"), "candidates"),
        data_source=str(row.get("data_source") or "default"),
        image_urls=_str_list(row.get("image_urls"), "image_urls"),
    )


_BLANK = object()  # a blank jsonl line (a `null` line is a row, and an error of its own)


def read_jsonl(path: str | Path, on_error: str = "raise") -> Rows:
    path = Path(path)
    rows = []
    with path.open("rb") as f:  # decoded line by line, so invalid UTF-8 is an error of its row
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                rows.append(ValueError(f"not UTF-8 (byte {err.start} of the line); re-save the file as UTF-8"))
                continue
            if not line.strip():
                rows.append(_BLANK)  # keeps indices = line numbers - 1; blank lines are reported below
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                rows.append(ValueError(f"not JSON ({err.msg} at column {err.colno})"))
            except ValueError:
                rows.append(ValueError("not JSON this reader accepts (an integer of over 4,300 digits)"))
            except RecursionError:
                rows.append(ValueError("not JSON this reader accepts (nested too deeply)"))

    def parse(row):
        if row is _BLANK:
            raise ValueError("blank line")
        if isinstance(row, ValueError):
            raise row
        return _jsonl_row(row, path.parent)

    return _collect(str(path), rows, parse, on_error)


def _collect(source: str, rows: Sequence, parse, on_error: str) -> Rows:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    samples, errors = [], []
    for index, row in enumerate(rows):
        try:
            sample = parse(row)
        except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as err:
            error = DatasetRowError(source, index, str(err) if isinstance(err, ValueError) else repr(err))
            if on_error == "raise":
                raise error from None
            logger.error("skipping %s", error)
            errors.append(error)
            continue
        sample.index = index
        samples.append(sample)
    return samples, errors


def read_dataset(path: str | Path, on_error: str = "raise") -> Rows:
    """Samples of a `.parquet` (MMSearch-R1 layout) or `.jsonl` file, and the rows that could not be read."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return read_mmsearch_parquet(path, on_error)
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path, on_error)
    raise DatasetFileError(str(path), f"unsupported dataset format {suffix!r} (expected .parquet, .jsonl or .json)")
