"""Datasets: the shared MMSearch-R1 rows, jsonl input, corrupt rows reported by index, OpenRLHF's prompt dataset."""

import base64
import io
import json
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from openrlhf_tapo.agent.data import convert, main
from openrlhf_tapo.agent.datasets import DatasetRowError, read_dataset, read_jsonl
from openrlhf_tapo.agent.reward import Label, parse_label

SHARED = Path("/work/shared/data/mmsearch_r1_mini.parquet")
SHARED_MISSING = not SHARED.is_file()


def png_bytes(colour=(10, 200, 30), size=(20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.skipif(SHARED_MISSING, reason="shared MMSearch-R1 sample not present")
def test_reads_the_shared_mmsearch_r1_rows():
    samples, errors = read_dataset(SHARED)
    assert errors == [] and [s.index for s in samples] == [0, 1, 2, 3, 4]
    first = samples[0]
    assert first.question == "What is the country of origin of this food?"
    assert (
        first.answer == "Spain"
        and "Kingdom of Spain" in first.candidates
        and "\U0001f1ea\U0001f1f8" in first.candidates
    )
    assert first.data_source == "mmsearch_r1/infoseek_train_split"
    assert [len(s.images) for s in samples] == [1] * 5
    with Image.open(io.BytesIO(first.images[0])) as image:
        assert image.format == "JPEG" and image.size[0] > 100
    assert [s.answer for s in samples] == [
        "Spain",
        "Gautama Buddha",
        "Order of Hospitallers",
        "Tuileries Palace",
        "Portugal",
    ]


@pytest.mark.skipif(SHARED_MISSING, reason="shared MMSearch-R1 sample not present")
def test_converted_rows_load_in_openrlhf_prompt_dataset(tmp_path):
    from datasets import load_dataset
    from openrlhf.datasets.prompts_dataset import PromptDataset
    from openrlhf.utils.vlm_utils import load_images

    out = tmp_path / "train.jsonl"
    assert convert(SHARED, out) == {"rows": 5, "errors": [], "downscaled": []}
    data = load_dataset("json", data_files=str(out), split="train")
    args = types.SimpleNamespace(
        data=types.SimpleNamespace(
            input_key="prompt", label_key="label", image_key="images", apply_chat_template=False
        )
    )
    strategy = types.SimpleNamespace(args=args, is_rank_0=lambda: True)
    dataset = PromptDataset(data, tokenizer=None, strategy=strategy)
    datasource, prompt, label, images = dataset[3]
    assert prompt == "What is this garden named after?" and datasource == "mmsearch_r1/infoseek_train_split"
    assert parse_label(label) == Label("Tuileries Palace", ("Tuileries Palace", "Palais des Tuileries"))
    (image,) = load_images(images)  # the paths OpenRLHF hands the executor open as images
    assert image.size[0] > 100 and Path(images[0]).is_absolute()


def test_jsonl_image_forms_and_base64_output(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png_bytes())
    b64 = base64.b64encode(png_bytes((1, 2, 3))).decode()
    rows = [
        {"question": "Q1 <image>", "image": "pics/a.png", "answer": "A1", "candidates": ["a one"]},
        {"question": "Q2", "images": [f"data:image/png;base64,{b64}", {"bytes": b64}], "answer": "A2"},
        {"question": "Q3", "image": "https://example.org/x.jpg", "answer": "A3", "data_source": "web"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    samples, errors = read_jsonl(src)
    assert errors == [] and [s.question for s in samples] == ["Q1", "Q2", "Q3"]
    assert samples[0].images == [png_bytes()] and samples[0].candidates == ["a one"]
    assert samples[1].images == [png_bytes((1, 2, 3))] * 2
    assert samples[2].images == ["https://example.org/x.jpg"] and samples[2].data_source == "web"

    out = tmp_path / "out.jsonl"
    convert(src, out, image_mode="base64")
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written[1]["images"][0] == f"data:image/png;base64,{b64}"
    assert written[2]["images"] == ["https://example.org/x.jpg"]
    assert json.loads(written[0]["label"]) == {"ground_truth": "A1", "candidate_answers": ["a one"]}


def test_corrupt_jsonl_rows_are_reported_with_their_index(tmp_path):
    good = {"question": "Q", "answer": "A"}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"question": "Q"}),  # no answer
        json.dumps({"question": "Q", "answer": "A", "image": "missing.png"}),
        json.dumps({"question": "Q", "answer": "A", "images": [{"bytes": base64.b64encode(b"\x89PNGjunk").decode()}]}),
        "",
        json.dumps(good),
    ]
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetRowError, match=r"row 1: not JSON") as err:
        read_jsonl(src)
    assert err.value.index == 1
    samples, errors = read_jsonl(src, on_error="skip")
    assert [s.index for s in samples] == [0, 6]
    assert [(e.index, e.reason.split(" ")[0]) for e in errors] == [
        (1, "not"),
        (2, "answer"),
        (3, "image"),
        (4, "image"),
        (5, "blank"),
    ]
    assert "does not decode" in errors[3].reason and "does not exist" in errors[2].reason


def test_corrupt_parquet_row_and_cli_report(tmp_path, capsys):
    good_image = png_bytes()
    truncated = good_image[: len(good_image) // 2]
    table = pa.table(
        {
            "prompt": [[{"role": "user", "content": "<image>Q0"}], [{"role": "user", "content": "Q1"}], []],
            "images": [[{"bytes": good_image, "path": None}], [{"bytes": truncated, "path": None}], []],
            "reward_model": [
                {"ground_truth": "A0", "candidate_answers": "[]", "style": "rule"},
                {"ground_truth": "A1", "candidate_answers": "[]", "style": "rule"},
                {"ground_truth": "A2", "candidate_answers": "[]", "style": "rule"},
            ],
            "data_source": ["s", "s", "s"],
        }
    )
    src = tmp_path / "mm.parquet"
    pq.write_table(table, src)
    samples, errors = read_dataset(src, on_error="skip")
    assert [s.question for s in samples] == ["Q0"]
    assert [(e.index, e.reason) for e in errors][0][0] == 1 and "images[0]" in errors[0].reason
    assert errors[1].index == 2 and "chat list" in errors[1].reason

    assert main([str(src), str(tmp_path / "o.jsonl")]) == 1
    assert "row 1" in capsys.readouterr().err
    assert main([str(src), str(tmp_path / "o.jsonl"), "--on-error", "skip"]) == 0
    captured = capsys.readouterr()
    assert "left out: " in captured.err and "row 2" in captured.err and "wrote 1 rows" in captured.out


def test_converter_downscales_question_images_over_max_pixels(tmp_path, capsys):
    big = io.BytesIO()
    Image.new("RGB", (4000, 3000), (200, 10, 10)).save(big, "JPEG")  # 12 MP: 15,300 Qwen2.5-VL tokens
    (tmp_path / "big.jpg").write_bytes(big.getvalue())
    (tmp_path / "small.png").write_bytes(png_bytes())
    rows = [{"question": "Q1", "images": ["big.jpg", "small.png"], "answer": "A"}, {"question": "Q2", "answer": "B"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main([str(src), str(out), "--max-pixels", "1003520"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 rows" in printed and "1 image(s) downscaled to 1003520 pixels" in printed
    written = [json.loads(line) for line in out.read_text().splitlines()]
    with Image.open(written[0]["images"][0]) as image:
        assert image.format == "JPEG" and image.size[0] * image.size[1] <= 1003520
        assert image.size == (1156, 867)  # 4:3 kept: sqrt(1003520 / 12e6) = 0.2892
    assert Path(written[0]["images"][1]).read_bytes() == png_bytes()  # small enough: the bytes as given
    assert convert(src, tmp_path / "o2.jsonl", max_pixels=1003520)["downscaled"] == [(0, 0)]
    with pytest.raises(ValueError, match="max_pixels must be a positive"):
        convert(src, tmp_path / "o3.jsonl", max_pixels=0)
