"""docs/cluster.md as written, on CPU at toy size: every `bash` block runs in order in one shell (`sh` blocks need
GPUs; their outputs, the two runs' HF checkpoints and tensorboard metrics, are stood in for here)."""

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _agent_helpers import PASSAGES, picture, tiny_vlm_dir

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "cluster.md"
TOKEN = "toy-search-token-5f1e"


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    picture(seed).save(buf, "PNG")
    return buf.getvalue()


def _fvqa_parquet(path: Path, rows: int) -> None:
    """MMSearch-R1's FVQA layout: chat prompt, images [{bytes, path}], reward_model, data_source."""
    table = [
        {
            "prompt": [{"role": "user", "content": f"<image>\nWhich city is this landmark in? ({i})"}],
            "images": [{"bytes": _png(i), "path": None}],
            "reward_model": {"ground_truth": "Paris", "candidate_answers": '["paris"]', "style": "rule"},
            "data_source": "fvqa",
        }
        for i in range(rows)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(table), path)


def _stand_in_run(save_path: Path, reward: float, corrected: float | None) -> None:
    """What a GPU run leaves: the HF model (--ckpt.save_hf) and OpenRLHF's tensorboard events under runs/."""
    from torch.utils.tensorboard import SummaryWriter

    shutil.copytree(tiny_vlm_dir(), save_path)
    # An untrained tiny model writes 1024 random tokens per turn on CPU; with every token an end of sequence each
    # turn ends after one, so `evaluate` runs the whole agent path in seconds.
    config = json.loads((save_path / "config.json").read_text())
    vocab = config.get("text_config", config).get("vocab_size") or config["vocab_size"]
    generation = json.loads((save_path / "generation_config.json").read_text())
    (save_path / "generation_config.json").write_text(json.dumps({**generation, "eos_token_id": list(range(vocab))}))
    writer = SummaryWriter(str(save_path / "runs" / "run"))
    for step in (1, 2, 3):
        writer.add_scalar("train/rollout/reward_mean", reward * step, step)
        writer.add_scalar("train/score", reward * step / 2, step)
        if corrected is not None:
            writer.add_scalar("train/tapo/corrected_calls", corrected, step)
    writer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_every_bash_block_of_the_cluster_doc_runs(tmp_path):
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 5 and "```sh\nray start" in DOC.read_text()
    work = tmp_path / "work"
    _fvqa_parquet(work / "raw" / "fvqa_train.parquet", 3)
    _fvqa_parquet(work / "raw" / "fvqa_test.parquet", 1)
    (work / "raw" / "corpus_text.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PASSAGES))
    images = [{"id": f"i{k}", "title": f"Picture {k}", "url": f"u/{k}", "image": base64.b64encode(_png(k)).decode()}
              for k in range(3)]  # fmt: skip
    (work / "raw" / "corpus_images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in images))
    _stand_in_run(work / "exp" / "tapo", 0.3, 2.0)
    _stand_in_run(work / "exp" / "grpo", 0.2, None)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):
        (bin_dir / name).write_text(f'#!/bin/bash\nexec "{sys.executable}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "WORK": str(work),
        "MODEL_PATH": str(tiny_vlm_dir()),
        "SEARCH_HOST": "127.0.0.1",
        "SEARCH_PORT": str(_free_port()),
        "TAPO_SEARCH_TOKEN": TOKEN,
        "WANDB_API_KEY": "",
    }
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + "\n".join(blocks)
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert TOKEN not in proc.stdout + proc.stderr

    train = [json.loads(line) for line in (work / "data" / "train.jsonl").read_text().splitlines()]
    assert len(train) == 3 and train[0]["prompt"].startswith("Which city") and Path(train[0]["images"][0]).is_file()
    assert (work / "index" / "meta.json").is_file()
    tapo, grpo = (json.loads((work / f"{run}.json").read_text()) for run in ("tapo", "grpo"))
    assert tapo["tapo"]["enable"] is True and grpo["tapo"]["enable"] is False
    for resolved in (tapo, grpo):
        assert resolved["agent"]["config"] == str(work / "agent.yaml")
        assert resolved["data"]["prompt_dataset"] == str(work / "data" / "train.jsonl")
    assert tapo["ckpt"]["output_dir"] == str(work / "exp" / "tapo")
    summary = (work / "compare" / "summary.md").read_text()
    assert "| TAPO |" in summary and "| GRPO |" in summary
    for run in ("tapo", "grpo"):
        assert json.loads((work / "eval" / run / "summary.json").read_text())["n"] == 1
