"""compare_runs reads what OpenRLHF's own loggers write (tensorboard, wandb offline) and our jsonl, and plots it."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from PIL import Image

from openrlhf_tapo.cli.compare_runs import main as compare_main
from openrlhf_tapo.eval.compare import smooth, summarize, summarize_curve
from openrlhf_tapo.eval.runs import METRICS, RunMetrics, load_run


def _openrlhf_tensorboard_run(root, name, rewards, lengths):
    """Write a run through OpenRLHF 0.11.2's real TensorboardLogger, with the status keys its trainer produces."""
    from openrlhf.utils.logging_utils import TensorboardLogger

    args = SimpleNamespace(logger=SimpleNamespace(tensorboard_dir=str(root), wandb=SimpleNamespace(run_name=name)))
    logger = TensorboardLogger(args)
    for step, (reward, length) in enumerate(zip(rewards, lengths, strict=True), start=1):
        logger.log_train(
            step,
            {
                "policy_loss": 0.1,
                "reward": reward,
                "rollout/reward_mean": reward,
                "rollout/response_length_mean": length,
                "response_length": length,
                "generated_samples": ["text", reward],
            },
        )
    logger.close()
    return root / name


def test_tensorboard_run_written_by_openrlhf_is_read_with_its_keys(tmp_path):
    run_dir = _openrlhf_tensorboard_run(tmp_path, "grpo", [0.1, 0.3, 0.2, 0.6], [40.0, 38.0, 35.0, 30.0])
    run = load_run(run_dir)
    steps, values = zip(*run.series["train/rollout/reward_mean"], strict=True)
    assert steps == (1, 2, 3, 4) and values == pytest.approx([0.1, 0.3, 0.2, 0.6])
    by_name = {m.name: m for m in METRICS}
    assert run.resolve(by_name["reward"]) == "train/rollout/reward_mean"
    assert run.resolve(by_name["response_length"]) == "train/rollout/response_length_mean"
    assert run.resolve(by_name["tapo_corrected_fraction"]) is None
    s = summarize_curve("k", run.series["train/rollout/reward_mean"], tail=0.5)
    assert (s.points, s.first, s.last) == (4, pytest.approx(0.1), pytest.approx(0.6))
    assert s.best == pytest.approx(0.6) and s.tail_mean == pytest.approx(0.4)  # mean(0.2, 0.6)


def test_jsonl_metrics_flatten_nesting_use_step_and_ignore_sample_files(tmp_path):
    rows = [
        {
            "step": 10,
            "reward": 0.5,
            "tapo": {"failing_calls_corrected_frac": 0.25, "mean_transferred_credit": 0.1},
            "tag": "x",
        },
        {
            "step": 20,
            "reward": 0.7,
            "tapo": {"failing_calls_corrected_frac": 0.5, "mean_transferred_credit": 0.3},
            "ok": True,
        },
        {"step": 20, "reward": 0.9},  # a resumed run re-logs step 20: the last value wins
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "samples.jsonl").write_text(json.dumps({"step": 1, "reward": 99.0}) + "\n")
    run = load_run(tmp_path, name="tapo")
    assert run.series["reward"] == [(10, 0.5), (20, 0.9)]
    assert run.series["tapo/failing_calls_corrected_frac"] == [(10, 0.25), (20, 0.5)]
    assert "tag" not in run.series and "ok" not in run.series  # strings and booleans are not curves
    table = summarize([run])
    assert table["tapo_corrected_fraction"]["tapo"].key == "tapo/failing_calls_corrected_frac"
    assert table["tapo_transferred_credit"]["tapo"].last == pytest.approx(0.3)
    assert run.sources == ["jsonl:metrics.jsonl"]


@pytest.mark.slow
def test_wandb_offline_run_is_read(tmp_path):
    script = (
        "import wandb\n"
        f"run = wandb.init(project='p', name='r', dir={str(tmp_path)!r})\n"
        "wandb.define_metric('train/global_step')\n"
        "wandb.define_metric('train/*', step_metric='train/global_step', step_sync=True)\n"
        "for i in range(3):\n"
        "    wandb.log({'train/global_step': i + 1, 'train/tool_calls': 1.0 + i, 'train/entropy_loss': 2.0 - i})\n"
        "wandb.finish()\n"
    )
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60, cwd=tmp_path)
    run = load_run(tmp_path)
    assert run.series["train/tool_calls"] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert run.series["train/entropy_loss"] == [(1, 2.0), (2, 1.0), (3, 0.0)]
    assert run.sources[0].startswith("wandb:")


def test_smooth_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([1.0, 3.0], 1) == [1.0, 3.0]


def test_cli_writes_pngs_and_summary_for_two_runs(tmp_path):
    base = _openrlhf_tensorboard_run(tmp_path / "tb", "grpo", [0.1, 0.2, 0.3], [50.0, 45.0, 40.0])
    ours = tmp_path / "tapo"
    ours.mkdir()
    (ours / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps({"step": i, "reward": 0.2 * i, "tapo/failing_calls_corrected_frac": 0.1}) for i in (1, 2, 3)
        )
        + "\n"
    )
    out = tmp_path / "cmp"
    assert compare_main([f"GRPO={base}", f"TAPO={ours}", "--out", str(out)]) == 0
    for name in ("reward", "response_length", "tapo_corrected_fraction"):
        with Image.open(out / f"{name}.png") as img:
            assert img.format == "PNG" and img.width > 100
    assert not (out / "entropy.png").exists()
    md = (out / "summary.md").read_text()
    assert "| GRPO | `train/rollout/reward_mean` | 3 | 0.1 | 0.3 | 0.3 |" in md
    assert "| TAPO | `reward` | 3 | 0.2 | 0.6 | 0.6 |" in md
    assert "| GRPO | (not logged) |" in md  # GRPO has no TAPO curve
    assert "Not logged by any run:" in md and "entropy" in md


def test_cli_rejects_missing_or_empty_runs(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        compare_main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no metrics found"):
        compare_main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")])


def test_run_metrics_drop_non_finite_values():
    run = RunMetrics(name="r", path=None)
    run.add("k", 1, float("nan"))
    run.add("k", 2, 1.5)
    run.finish()
    assert run.series == {"k": [(2, 1.5)]}
