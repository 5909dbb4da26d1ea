"""Wall time of the launcher's preflight scan of a large prompt file (every row: keys, image count, each image's
token count from its header, prompt + images against --data.max_len).

    .venv/bin/python benchmarks/bench_preflight_scan.py                 # 100,000 rows, 10,000 distinct JPEG files
    .venv/bin/python benchmarks/bench_preflight_scan.py --rows 10000    # quicker

The rows are written the way `python -m openrlhf_tapo.agent.data` writes them (absolute image paths, one image per
row, sizes from 200 x 150 to 2,000 x 1,500 px: the three largest sizes, 30 % of the rows, exceed the 2,048-token
budget). The model is the tiny
Qwen2.5-VL of the tests with the released Qwen2.5-VL processor's pixel limits, so image and text tokens are counted
as for the real model (with its tokenizer). Printed: rows, bad rows found, seconds, rows per second.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _agent_helpers import tiny_vlm_dir  # noqa: E402

from openrlhf_tapo.adapter.checks import preflight  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=10_000, help="distinct image files the rows point to")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_preflight_"))
    try:
        model = work / "model"
        shutil.copytree(tiny_vlm_dir(), model)
        config = json.loads((model / "processor_config.json").read_text())
        config["image_processor"]["size"] = {"shortest_edge": 3136, "longest_edge": 12845056}  # Qwen2.5-VL's
        (model / "processor_config.json").write_text(json.dumps(config))
        images = work / "images"
        images.mkdir()
        paths = []
        for i in range(args.images):
            side = 200 + (i % 10) * 200
            path = images / f"{i:06d}.jpg"
            Image.new("RGB", (side, side * 3 // 4), (i % 256, 80, 160)).save(path, quality=50)
            paths.append(str(path))
        data = work / "train.jsonl"
        with data.open("w") as f:
            for i in range(args.rows):
                image = paths[i % args.images]
                row = {"prompt": f"Question {i}: which landmark is shown?", "label": "x", "images": [image]}
                f.write(json.dumps(row) + "\n")
        spec = SimpleNamespace(prompt_dataset=str(data), input_key="prompt", label_key="label", image_key="images",
                               max_images_per_prompt=4, max_len=2048)  # fmt: skip
        start = time.perf_counter()
        problems, scan = preflight.check_prompt_data(spec, str(model))
        seconds = time.perf_counter() - start
        bad = int(problems[0].split(" row(s)")[0].rsplit(" ", 1)[-1]) if problems else 0
        print(f"rows {len(scan.rows)}  bad rows {bad}  {seconds:.1f} s  {len(scan.rows) / seconds:,.0f} rows/s")
        print(problems[0][:400] if problems else "no problems")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
