"""Reading jsonl files of JSON objects, with errors that name the file and the line."""

import json
import os
from collections.abc import Iterator
from pathlib import Path


def iter_json_objects(path: str | os.PathLike, error: type[ValueError] = ValueError) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; raises `error` naming the line when it is not a JSON object."""
    path = Path(path)
    with path.open("r", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path}: line {line_no} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise error(f"{path}: line {line_no} is not a JSON object")
            yield line_no, row
