"""The regime check: the trend by hand, the signals pooled by hand, every branch of the reading on hand-built
signals, the input errors, and one seeded run on a tiny task through the CLI."""

import json
import math

import pytest
import torch

from openrlhf_tapo.agent.failures import FAILURE_KINDS
from openrlhf_tapo.eval.regime import (
    MIN_CORRECTABLE,
    Signals,
    Trend,
    read_regime,
    signals,
    trend,
)
from openrlhf_tapo.runners.regime_run import RegimeCheckConfig, RegimeCheckError, mixed_group_share, read_rows


def test_trend_by_hand():
    # x 1..4, y 0 2 1 3: slope sxy / sxx = 4 / 5; residuals -0.3 0.9 -0.9 0.3, s^2 = 1.8 / 2, se = sqrt(0.9 / 5);
    # t(0.975, 2) = 4.302653
    t = trend([0.0, 2.0, 1.0, 3.0])
    half = 4.302653 * math.sqrt(0.9 / 5)
    assert t.slope == pytest.approx(0.8)
    assert (t.low, t.high) == (pytest.approx(0.8 - half, abs=1e-5), pytest.approx(0.8 + half, abs=1e-5))
    assert (t.first_half, t.last_half, t.steps) == (1.0, 2.0, 4) and t.direction == "flat"
    exact = trend([0.9, 0.8, 0.7, 0.6, 0.5])  # a straight line: the interval has width 0
    assert exact.slope == pytest.approx(-0.1) and exact.high == pytest.approx(-0.1) and exact.direction == "falling"
    assert (exact.first_half, exact.last_half) == (pytest.approx(0.85), pytest.approx(0.55))  # odd: middle left out
    assert trend([0.1, 0.3, 0.2, 0.4, 0.5, 0.7]).direction == "rising"
    two = trend([0.2, 0.4])
    assert two.slope == pytest.approx(0.2) and math.isnan(two.low) and two.direction == "flat"
    with pytest.raises(ValueError, match="--steps"):
        trend([0.5])


def _step(rate, acc=0.4, failing=8.0, correctable=0.5, mixed=0.5, **failures):
    kinds = {f"failure/{k}": failures.get(k, 0.0) for k in FAILURE_KINDS}
    return {"tool_call_rate": rate, "accuracy": acc, "failing": failing, "correctable": correctable,
            "mixed_groups": mixed, **kinds}  # fmt: skip


def test_signals_pool_counts_not_fractions():
    steps = [
        _step(0.8, acc=0.5, failing=10.0, correctable=0.6, mixed=0.75, wrong_answer=0.3, no_call=0.1),
        _step(0.6, acc=0.3, failing=0.0, correctable=0.0, mixed=0.25, wrong_answer=0.1, malformed_call=0.1),
        _step(0.4, acc=0.4, failing=30.0, correctable=0.2, mixed=0.5, wrong_parameters=0.2),
    ]
    s = signals(steps)
    # a step without failing trajectories weighs nothing: (0.6 * 10 + 0.2 * 30) / 40
    assert s.correctable == pytest.approx(12 / 40) and s.failing_trajectories == 40
    # failure/<kind> sums 0.1 + 0.4 + 0 + 0.2 + 0.1 = 0.8 of the trajectories over the steps
    assert s.failure_shares == pytest.approx(
        {"malformed_call": 0.125, "wrong_answer": 0.5, "no_answer": 0.0, "wrong_parameters": 0.25, "no_call": 0.125}
    )
    assert sum(s.failure_shares.values()) == pytest.approx(1.0) and s.answer_step_share == pytest.approx(0.5)
    assert s.call_rate.slope == pytest.approx(-0.2) and s.mixed_group_share == pytest.approx(0.5)
    assert s.accuracy == pytest.approx(0.4)
    assert s.to_json()["call_rate"]["direction"] == "falling"


def _signals(rate: Trend, correctable=0.3, failing=40, mixed=0.6, **shares) -> Signals:
    base = {k: 0.0 for k in FAILURE_KINDS}
    base.update(shares or {"wrong_parameters": 1.0})
    return Signals(rate, correctable, base, failing, mixed, 0.4)


FALLING = Trend(-0.03, -0.05, -0.01, 0.7, 0.5, 8)
SATURATED = Trend(0.01, -0.01, 0.03, 0.93, 0.97, 8)
RARE = Trend(0.0, -0.01, 0.01, 0.05, 0.05, 8)
MIDDLE = Trend(0.01, -0.02, 0.04, 0.5, 0.55, 8)


@pytest.mark.parametrize(
    "s, verdict, phrase",
    [
        (_signals(FALLING, failing=5), "cannot_tell", "Too little contrast"),
        (_signals(FALLING, mixed=0.05), "cannot_tell", "Too little contrast"),
        (_signals(FALLING, correctable=MIN_CORRECTABLE), "likely", "GRPO is pushing useful calls down"),
        (_signals(FALLING, correctable=0.05), "unlikely", "may not be worth calling"),
        (_signals(SATURATED), "small", "Calls saturate"),
        (_signals(SATURATED, wrong_answer=0.6, wrong_parameters=0.4), "unlikely", "Calls saturate"),
        (_signals(RARE), "unlikely", "hardly calls"),
        (_signals(MIDDLE), "cannot_tell", "neither pushes calls down nor saturates"),
    ],
)
def test_every_branch_of_the_reading(s, verdict, phrase):
    reading = read_regime(s)
    assert reading.verdict == verdict
    assert phrase in reading.lines[1] and reading.lines[0].startswith("tool-call rate")


def test_the_reading_names_what_tapo_cannot_reach():
    answer = read_regime(_signals(SATURATED, wrong_answer=0.4, no_answer=0.1, wrong_parameters=0.5))
    assert answer.verdict == "unlikely" and any("--gigpo.enable" in line for line in answer.lines)
    assert not any("--gigpo.enable" in line for line in read_regime(_signals(SATURATED)).lines)
    malformed = read_regime(_signals(FALLING, malformed_call=0.7, no_call=0.3))
    assert malformed.verdict == "likely" and any("malformed call" in line for line in malformed.lines)


def test_mixed_groups_are_groups_with_a_nonzero_advantage():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # groups of 2: rollouts 0-1 (group 0) in one micro-batch, 2-3 (group 1) split over two, 4-5 (group 2)
    batches = [
        ([0, 1], torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 0.0]]), mask),  # group 0: only masked tokens differ
        ([2, 4], torch.tensor([[0.0, 0.0, 0.0], [0.7, 0.7, 0.7]]), mask),
        ([3, 5], torch.tensor([[-0.5, -0.5, 0.0], [-0.7, -0.7, -0.7]]), mask),
    ]
    assert mixed_group_share(batches, group_size=2) == pytest.approx(2 / 3)


def _config(tmp_path, **kw):
    defaults = dict(prompts=str(tmp_path / "rows.jsonl"), agent_config="a.yaml", pretrain="m", out=str(tmp_path))
    return RegimeCheckConfig(**{**defaults, **kw})


def test_bad_inputs_name_the_flag(tmp_path):
    with pytest.raises(RegimeCheckError, match="--prompts .*does not exist"):
        read_rows(_config(tmp_path))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "Q?", "label": json.dumps({"ground_truth": ""})}) + "\n")
    with pytest.raises(RegimeCheckError, match="--prompts.*label"):
        read_rows(_config(tmp_path))
    rows.write_text(json.dumps({"image": "x.png", "question": "Q?", "answer": "A"}) + "\n")
    with pytest.raises(RegimeCheckError, match="LLM judge"):
        read_rows(_config(tmp_path, fmt="simplevqa", image_root=str(_png(tmp_path))))


def _png(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    return tmp_path


def test_bad_agent_or_model_names_the_flag(tmp_path):
    from openrlhf_tapo.runners.regime_run import check_inputs

    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(RegimeCheckError, match="--steps must be >= 3"):
        check_inputs(_config(tmp_path, steps=2))
    with pytest.raises(RegimeCheckError, match="--pretrain .*not a local model folder"):
        check_inputs(_config(tmp_path))
    with pytest.raises(RegimeCheckError, match="--pretrain .*config.json"):
        check_inputs(_config(tmp_path, pretrain=str(model)))
    (model / "config.json").write_text("{}")
    no_backend, no_tools = tmp_path / "no_backend.yaml", tmp_path / "no_tools.yaml"
    no_backend.write_text("max_turns: 2\n")
    no_tools.write_text("tools: {enabled: []}\n")
    with pytest.raises(RegimeCheckError, match="--agent-config .*tools cannot be built.*index_dir"):
        check_inputs(_config(tmp_path, pretrain=str(model), agent_config=str(no_backend)))
    with pytest.raises(RegimeCheckError, match="--agent-config .*no tool is enabled"):
        check_inputs(_config(tmp_path, pretrain=str(model), agent_config=str(no_tools)))


def test_cli_exits_with_the_message(tmp_path):
    from openrlhf_tapo.cli.regime_check import main

    argv = ["--prompts", str(tmp_path / "none.parquet"), "--agent-config", "a.yaml", "--pretrain", "m"]
    with pytest.raises(SystemExit, match="regime_check: --prompts .*none.parquet: the file does not exist"):
        main([*argv, "--out", str(tmp_path / "out")])


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
    from openrlhf_tapo.task.prepare import TaskConfig, prepare_task
    from openrlhf_tapo.task.questions import QuestionSetConfig

    config = TaskConfig(
        kb=KnowledgeBaseConfig(num_entities=6), questions=QuestionSetConfig(num_eval=2), vocab_size=400
    )
    return prepare_task(tmp_path_factory.mktemp("task"), config, progress=lambda _: None)


@pytest.mark.slow  # ~30 s: the tiny task is built, then two 3-step runs
def test_a_seeded_run_on_a_tiny_task_writes_the_signals_and_the_reading(tiny_task, tmp_path, capsys):
    from openrlhf_tapo.cli.regime_check import main
    from openrlhf_tapo.eval.regime import read_regime, signals

    def run(out):
        argv = ["--prompts", str(tiny_task.prompts["train"]), "--agent-config", str(tiny_task.agent_config)]
        argv += ["--pretrain", str(tiny_task.model_dir), "--steps", "3", "--prompts-per-step", "2"]
        argv += ["--n-samples", "2", "--max-len", "384", "--out", str(out)]
        assert main(argv) == 0
        return json.loads((out / "regime.json").read_text())

    result = run(tmp_path / "a")
    printed = capsys.readouterr().out
    assert [s["step"] for s in result["steps"]] == [1, 2, 3]
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 3
    assert result["settings"]["tapo_beta"] == 0.0 and result["inputs"]["rows"] == 4
    # the file's signals and reading are those of its own step records
    again = signals(result["steps"])
    assert result["signals"]["correctable"] == again.correctable
    assert result["reading"]["verdict"] == read_regime(again).verdict
    assert f"TAPO likely to matter? {result['reading']['verdict'].upper().replace('_', ' ')}" in printed
    assert result["reading"]["lines"][-1] in printed
    assert run(tmp_path / "b")["steps"] == result["steps"]  # seeded: the same run twice
