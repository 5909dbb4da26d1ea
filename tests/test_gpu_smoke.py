"""scripts/gpu_smoke.sh: run on CPU in its `--dry-run` mode (every check that needs no GPU runs, the CUDA parts say
SKIP), and its checks of a Ray job's metrics on hand-made metrics."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a Ray head and jobs / the GPU smoke script in a subprocess

REPO = Path(__file__).resolve().parents[1]
GiB = 2**30


def _smoke_module():
    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "scripts" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


smoke = _smoke_module()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_smoke.sh"), "--dry-run", "--out", str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"(PASS|FAIL|SKIP) +([^:]+): (.*)", line)
        if match:
            lines[match.group(2)] = (match.group(1), match.group(3))
    return proc, lines, out


def test_dry_run_passes_what_needs_no_gpu_and_skips_the_rest(dry_run):
    proc, lines, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert lines["environment"][0] == "PASS" and "--dry-run" in lines["environment"][1]
    for family, patch in (("qwen2_5_vl", 14), ("qwen3_vl", 16)):
        assert lines[f"tiny model [{family}]"][0] == "PASS"
        assert lines[f"stock processor [{family}]"][0] == "SKIP"  # no torchvision in the CPU environments
        status, detail = lines[f"forward [{family}]"]
        assert status == "PASS" and "on cpu (float32)" in detail and "finite" in detail
        # the scripted gold trace: question image + the image search's hit; 2 x 2 patches of 3 x 2 x patch^2 values
        status, detail = lines[f"pixel bytes [{family}]"]
        assert status == "PASS" and detail.startswith("3 turns, 2 images (1 from tools)"), detail
        per_token = int(re.search(r"(\d+) per image token", detail).group(1))
        itemsize = {"float32": 4, "bfloat16": 2}[re.search(r"bytes of (\w+) pixel values", detail).group(1)]
        assert per_token == 4 * 3 * 2 * patch * patch * itemsize
        for check in ("ray job", *smoke.RUN_CHECKS):
            assert lines[f"{check} [{family}]"] == ("SKIP", "--dry-run (needs CUDA, vLLM, Ray, DeepSpeed, OpenRLHF)")
    assert lines["algorithms"][0] == "SKIP"
    assert proc.stdout.strip().splitlines()[-1] == "GPU smoke: 7 passed, 0 failed, 15 skipped"
    assert len(json.loads((out / "report.json").read_text())) == 22


def _step(step: int, **values) -> dict:
    base = {
        "step": step,
        "errors/prompt_length": 0.0,
        "vllm_kl": 2e-4,
        "mm_bytes": 150528.0,
        "tapo/num_calls": 3.0,
        "tapo/failing_traj_correctable_frac": 0.5,
    }
    return {**base, **values}


def _statuses(metrics, used=(1 * GiB, 40 * GiB, 42 * GiB, 3 * GiB, 41 * GiB, 2 * GiB)) -> dict:
    return {name: status for status, name, _ in smoke.evaluate_run(metrics, list(used), 80 * GiB)}


def test_a_healthy_job_passes_every_run_check():
    assert _statuses([_step(1), _step(2)]) == dict.fromkeys(smoke.RUN_CHECKS, "PASS")


@pytest.mark.parametrize(
    "metrics, used, failing",
    [
        ([_step(1), _step(2, **{"errors/prompt_length": 2.0})], None, "prompt length"),
        ([{k: v for k, v in _step(s).items() if k != "errors/prompt_length"} for s in (1, 2)], None, "prompt length"),
        ([_step(1), _step(2, vllm_kl=0.5)], None, "vllm_kl"),  # a stale or partial weight sync
        ([{k: v for k, v in _step(s).items() if k != "vllm_kl"} for s in (1, 2)], None, "vllm_kl"),
        ([_step(1), _step(2)], (1 * GiB, 40 * GiB, 42 * GiB, 30 * GiB, 41 * GiB, 1 * GiB), "memory after sleep"),
        ([{k: v for k, v in _step(s).items() if k != "mm_bytes"} for s in (1, 2)], None, "job pixel bytes"),
        ([_step(1), _step(2, **{"tapo/num_calls": float("nan")})], None, "tapo stats"),
        ([{k: v for k, v in _step(s).items() if k != "tapo/num_calls"} for s in (1, 2)], None, "tapo stats"),
    ],
)
def test_each_run_check_fails_on_its_own_fault(metrics, used, failing):
    # (memory: vLLM never fell asleep between its wakes; the 1 GiB at the end is the job's exit, which does not count)
    statuses = _statuses(metrics, used) if used else _statuses(metrics)
    assert statuses == {**dict.fromkeys(smoke.RUN_CHECKS, "PASS"), failing: "FAIL"}
