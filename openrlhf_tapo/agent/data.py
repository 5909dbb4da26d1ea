"""Question data converted to the prompt dataset layout OpenRLHF reads (the samples come from `agent/datasets.py`).

Output (`write_openrlhf_jsonl`): one object per line with `prompt` (the question text), `label` (a JSON string
{"ground_truth", "candidate_answers"} that reward.parse_label reads), `images` (absolute file paths, or data URIs
with `image_mode="base64"`) and `datasource`. Train with
`--data.input_key prompt --data.label_key label --data.image_key images` and WITHOUT `--data.apply_chat_template`:
the agent executor writes the chat prompt itself (tools system turn, labelled images).

CLI: `python -m openrlhf_tapo.agent.data INPUT OUTPUT.jsonl [--image-mode file|base64] [--on-error raise|skip]
[--max-pixels N]`. `--max-pixels` downscales question images over N pixels (aspect kept, re-encoded in their
format): a 12-megapixel photo takes up to 16,384 tokens in Qwen2.5-VL, the whole of a 16k context (the launcher's
preflight names such rows). Images given as URLs are left as they are.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from openrlhf_tapo.agent.datasets import AgentSample, read_dataset
from openrlhf_tapo.tools.image_fit import fit_image, fits

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}


def _extension(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return EXTENSIONS.get(image.format or "", "png")


def downscale(data: bytes, max_pixels: int) -> bytes | None:
    """The encoded image resized to at most `max_pixels` (tools/image_fit.py's rules, which also pad an aspect
    ratio over 1:50), in its own format (JPEG at quality 95; PNG for formats PIL cannot write); None when it fits."""
    with Image.open(io.BytesIO(data)) as image:
        if fits(image, max_pixels, 1):
            return None
        fmt = image.format if image.format in ("JPEG", "PNG", "WEBP") else "PNG"
        resized = fit_image(image.convert("RGB") if fmt == "JPEG" else image, max_pixels, 1)
    out = io.BytesIO()
    resized.save(out, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return out.getvalue()


def openrlhf_rows(
    samples: Iterable[AgentSample],
    image_dir: str | Path | None,
    image_mode: str = "file",
    max_pixels: int | None = None,
    downscaled: list | None = None,
) -> list[dict]:
    """OpenRLHF prompt-dataset rows. `image_mode="file"` writes image bytes under `image_dir` (absolute paths in
    the rows, as OpenRLHF's image loader opens paths relative to the working directory); "base64" inlines data URIs.
    `max_pixels`: images over it are downscaled (`downscale`); each one's (sample index, image k) goes to
    `downscaled`.
    """
    if image_mode not in ("file", "base64"):
        raise ValueError(f"image_mode must be 'file' or 'base64', got {image_mode!r}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels, got {max_pixels}")
    rows = []
    for sample in samples:
        refs = []
        for k, image in enumerate(sample.images):
            if isinstance(image, str):
                refs.append(image)
                continue
            smaller = downscale(image, max_pixels) if max_pixels else None
            if smaller is not None:
                image = smaller
                if downscaled is not None:
                    downscaled.append((sample.index, k))
            ext = _extension(image)
            if image_mode == "base64":
                mime = "jpeg" if ext == "jpg" else ext
                refs.append(f"data:image/{mime};base64,{base64.b64encode(image).decode()}")
            else:
                if image_dir is None:
                    raise ValueError("image_dir is required with image_mode='file'")
                target = Path(image_dir).resolve() / f"{sample.index:07d}_{k}.{ext}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(image)
                refs.append(str(target))
        rows.append(
            {"prompt": sample.question, "label": sample.label(), "images": refs, "datasource": sample.data_source}
        )
    return rows


def write_openrlhf_jsonl(
    samples: Iterable[AgentSample],
    out_path: str | Path,
    image_mode: str = "file",
    max_pixels: int | None = None,
    downscaled: list | None = None,
) -> Path:
    """Write the rows; images (file mode) go to `<out_path without suffix>_images/`."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = openrlhf_rows(samples, out.with_name(out.stem + "_images"), image_mode, max_pixels, downscaled)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def convert(
    input_path: str | Path,
    out_path: str | Path,
    image_mode: str = "file",
    on_error: str = "raise",
    max_pixels: int | None = None,
) -> dict:
    """Read a dataset, write OpenRLHF rows; returns {"rows": n, "errors": [messages of the rows left out],
    "downscaled": [(row index, image k) of each image downscaled to max_pixels]}."""
    samples, errors = read_dataset(input_path, on_error)
    downscaled = []
    write_openrlhf_jsonl(samples, out_path, image_mode, max_pixels, downscaled)
    return {"rows": len(samples), "errors": [str(e) for e in errors], "downscaled": downscaled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert MMSearch-R1 parquet / agent jsonl to OpenRLHF prompt rows.")
    parser.add_argument("input", help=".parquet (MMSearch-R1 layout) or .jsonl (question/image/answer/candidates)")
    parser.add_argument("output", help="output .jsonl (images go to <output stem>_images/)")
    parser.add_argument("--image-mode", choices=["file", "base64"], default="file")
    parser.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="skip = leave out and report")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="downscale question images over this many pixels, e.g. 1003520 (1,280 Qwen2.5-VL tokens); default: "
        "keep their size",
    )
    args = parser.parse_args(argv)
    try:
        report = convert(args.input, args.output, args.image_mode, args.on_error, args.max_pixels)
    except (ValueError, OSError) as err:  # DatasetRowError / DatasetFileError name the file (and row)
        print(f"error: {err}", file=sys.stderr)
        return 1
    for message in report["errors"]:
        print(f"left out: {message}", file=sys.stderr)
    downscaled = (
        f", {len(report['downscaled'])} image(s) downscaled to {args.max_pixels} pixels" if args.max_pixels else ""
    )
    print(f"wrote {report['rows']} rows to {args.output} ({len(report['errors'])} left out{downscaled})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
