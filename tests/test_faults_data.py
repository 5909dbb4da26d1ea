"""Fault matrix, data readers: every corrupt input gives an error naming the file, the row and the field, or (with
`on_error="skip"`) is left out and counted; the converter CLI prints one `error:` line instead of a traceback."""

import base64
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from openrlhf_tapo.agent.data import main
from openrlhf_tapo.agent.datasets import DatasetFileError, DatasetRowError, read_dataset

HUGE_INT = "9" * 5000


def png_bytes(colour=(10, 200, 30), size=(20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


GOOD = json.dumps({"question": "Q", "answer": "A"}).encode()

# (what, the bad jsonl line, words the row error must contain)
BAD_JSONL_ROWS = [
    ("invalid UTF-8", b'{"question": "Q\xff\xfe", "answer": "A"}', "UTF-8"),
    ("latin-1 text", '{"question": "Café", "answer": "A"}'.encode("latin-1"), "UTF-8"),
    ("huge integer", b'{"question": "Q", "answer": "A", "n": ' + HUGE_INT.encode() + b"}", "not JSON"),
    ("deeply nested", b'{"question": "Q", "answer": "A", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested"),
    ("truncated object", b'{"question": "Q", "answ', "not JSON"),
    ("blank", b"   ", "blank"),
    ("array row", b'["Q", "A"]', "JSON object"),
    ("null row", b"null", "JSON object"),
    ("answer missing", b'{"question": "Q"}', "answer"),
    ("question a number", b'{"question": 5, "answer": "A"}', "question"),
    (
        "candidates huge integer",
        b'{"question": "Q", "answer": "A", "candidates": "[' + HUGE_INT.encode() + b']"}',
        "candidates",
    ),
    ("candidates nested", b'{"question": "Q", "answer": "A", "candidates": "' + b"[" * 5000 + b'"}', "candidates"),
    ("candidates not strings", b'{"question": "Q", "answer": "A", "candidates": [1, 2]}', "candidates"),
    ("image path too long", json.dumps({"question": "Q", "answer": "A", "image": "a/" * 3000}).encode(), "image 0"),
    ("image path with NUL", json.dumps({"question": "Q", "answer": "A", "image": "a\u0000b.png"}).encode(), "image 0"),
    ("image missing file", json.dumps({"question": "Q", "answer": "A", "image": "nope.png"}).encode(), "image 0"),
    (
        "image base64 not an image",
        json.dumps({"question": "Q", "answer": "A", "image": "QUJD" * 100}).encode(),
        "image 0",
    ),
    ("image a number", json.dumps({"question": "Q", "answer": "A", "image": 7}).encode(), "image 0"),
    (
        "image bytes not a string",
        json.dumps({"question": "Q", "answer": "A", "image": {"bytes": 5}}).encode(),
        "image 0",
    ),
    (
        "image truncated",
        json.dumps({"question": "Q", "answer": "A", "image": base64.b64encode(png_bytes()[:40]).decode()}).encode(),
        "does not decode",
    ),
]


@pytest.mark.parametrize("what, line, says", BAD_JSONL_ROWS, ids=[r[0] for r in BAD_JSONL_ROWS])
def test_bad_jsonl_row_is_named_or_skipped_and_counted(tmp_path, what, line, says):
    src = tmp_path / "data.jsonl"
    src.write_bytes(b"\n".join([GOOD, line, GOOD]) + b"\n")
    with pytest.raises(DatasetRowError) as err:
        read_dataset(src)
    assert err.value.index == 1 and str(src) in str(err.value) and says in str(err.value), str(err.value)
    samples, errors = read_dataset(src, on_error="skip")
    assert [s.index for s in samples] == [0, 2] and [e.index for e in errors] == [1]


def test_raw_base64_images_in_jsonl_are_read(tmp_path):
    raw = base64.b64encode(png_bytes((1, 2, 3), (64, 64))).decode()  # long: as a file name it is "too long"
    src = tmp_path / "data.jsonl"
    src.write_text(json.dumps({"question": "Q", "answer": "A", "images": [raw, {"bytes": raw}]}) + "\n")
    samples, errors = read_dataset(src)
    assert errors == [] and samples[0].images == [png_bytes((1, 2, 3), (64, 64))] * 2


def _parquet(path, **columns):
    default = {
        "prompt": [[{"role": "user", "content": "<image>Q0"}]],
        "images": [[{"bytes": png_bytes(), "path": None}]],
        "reward_model": [{"ground_truth": "A0", "candidate_answers": "[]", "style": "rule"}],
    }
    default.update(columns)
    pq.write_table(pa.table({k: v for k, v in default.items() if v is not None}), path)
    return path


def _truncated(path):
    _parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = [
    ("truncated parquet", "d.parquet", _truncated, "not a readable parquet file"),
    ("empty parquet", "d.parquet", lambda p: p.write_bytes(b""), "not a readable parquet file"),
    ("text as parquet", "d.parquet", lambda p: p.write_text("question,answer\n"), "not a readable parquet file"),
    ("no images column", "d.parquet", lambda p: _parquet(p, images=None), "missing column(s) images"),
    ("no prompt column", "d.parquet", lambda p: _parquet(p, prompt=None), "missing column(s) prompt"),
    ("unknown extension", "d.csv", lambda p: p.write_text("q,a\n"), "unsupported dataset format '.csv'"),
    ("no extension", "data", lambda p: p.write_text("{}\n"), "unsupported dataset format"),
]


@pytest.mark.parametrize("what, name, make, says", BAD_FILES, ids=[r[0] for r in BAD_FILES])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_unreadable_file_is_a_clear_error_naming_it(tmp_path, capsys, what, name, make, says, on_error):
    src = tmp_path / name
    make(src)
    with pytest.raises(DatasetFileError) as err:
        read_dataset(src, on_error=on_error)
    assert str(src) in str(err.value) and says in str(err.value), str(err.value)
    assert main([str(src), str(tmp_path / "out.jsonl"), "--on-error", on_error]) == 1
    printed = capsys.readouterr().err
    assert printed.startswith(f"error: {src}") and "Traceback" not in printed


BAD_PARQUET_ROWS = [
    ("reward_model missing", dict(reward_model=[None]), "reward_model"),
    ("ground truth empty", dict(reward_model=[{"ground_truth": " ", "candidate_answers": "[]"}]), "ground_truth"),
    (
        "candidates huge integer",
        dict(reward_model=[{"ground_truth": "A", "candidate_answers": "[" + HUGE_INT + "]"}]),
        "candidate_answers",
    ),
    ("image bytes missing", dict(images=[[{"bytes": None, "path": "x.png"}]]), "images[0]"),
    ("image garbage", dict(images=[[{"bytes": b"\x89PNG garbage", "path": None}]]), "images[0]"),
    ("prompt empty", dict(prompt=[[]]), "prompt"),
]


@pytest.mark.parametrize("what, columns, says", BAD_PARQUET_ROWS, ids=[r[0] for r in BAD_PARQUET_ROWS])
def test_bad_parquet_row_is_named_or_skipped_and_counted(tmp_path, what, columns, says):
    src = _parquet(tmp_path / "d.parquet", **columns)
    with pytest.raises(DatasetRowError) as err:
        read_dataset(src)
    assert err.value.index == 0 and str(src) in str(err.value) and says in str(err.value), str(err.value)
    samples, errors = read_dataset(src, on_error="skip")
    assert samples == [] and [e.index for e in errors] == [0]
