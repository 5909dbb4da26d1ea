"""The recall_cost preset of the bundled task (issue 21): its files (the default task's unchanged byte for byte), the
reward's search charge, the split of summaries by question kind, and its two gates on hand-built inputs; at the end
the collapse-gate driver of the study on a tiny seeded run (~10 s)."""

import asyncio
import dataclasses
import hashlib
import json
import math
import random

import pytest

from openrlhf_tapo.adapter.inprocess.agent_rollouts import by_kind, summarize_responses
from openrlhf_tapo.agent import protocol
from openrlhf_tapo.agent.config import load_agent_config
from openrlhf_tapo.agent.reward import Label, compute_reward
from openrlhf_tapo.eval.study_stats import RunResult, kinds_table, run_curves
from openrlhf_tapo.task import gates
from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
from openrlhf_tapo.task.prepare import TaskConfig, held_out_recall, prepare_task, read_prompt_rows
from openrlhf_tapo.task.presets import TASK_PRESETS, RecallCostConfig, preset_variant
from openrlhf_tapo.task.questions import (
    NAMED_QUESTION,
    NEEDS_TOOL,
    QUESTION,
    RECALL,
    QuestionSetConfig,
    read_questions,
    search_calls,
    teacher_actions,
)
from openrlhf_tapo.task.report import format_summary, summarize

SIZES = dict(kb=KnowledgeBaseConfig(num_entities=24), questions=QuestionSetConfig(num_eval=8, num_select=4))
# sha256[:16] of the default task's files at SIZES, built before the preset existed (root path replaced by ROOT)
DEFAULT_FILES = {
    "kb/questions_train.jsonl": "19ee2dd62ea85562",
    "kb/questions_eval.jsonl": "4050e2d49fb2ea4f",
    "kb/questions_select.jsonl": "e550f3593b220ece",
    "prompts_train.jsonl": "8f2ed85aa567e849",
    "prompts_eval.jsonl": "ce09e2eec319fa44",
    "prompts_select.jsonl": "bd8dd9820b829fff",
    "agent.yaml": "c1f71265d15f9dc3",
}


def _digest(root, name: str) -> str:
    return hashlib.sha256((root / name).read_text().replace(str(root), "ROOT").encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def default_task(tmp_path_factory):
    return prepare_task(tmp_path_factory.mktemp("default"), TaskConfig(**SIZES), progress=lambda _: None)


@pytest.fixture(scope="module")
def recall_task(tmp_path_factory):
    config = TaskConfig(**SIZES, recall_cost=RecallCostConfig(known_share=0.5, search_penalty=0.1))
    return prepare_task(tmp_path_factory.mktemp("recall"), config, progress=lambda _: None)


def test_the_default_preset_writes_the_same_files_as_before_it_existed(default_task):
    assert {name: _digest(default_task.root, name) for name in DEFAULT_FILES} == DEFAULT_FILES
    assert TaskConfig().recall_cost is None and TaskConfig().preset == "default"
    assert TASK_PRESETS["default"] is None and preset_variant("default") is None


def test_recall_cost_marks_the_known_share_of_every_split_and_writes_kinds_into_the_rows(recall_task):
    sizes = {"train": 12, "eval": 8, "select": 4}
    for split, n in sizes.items():
        questions = read_questions(recall_task.questions[split])
        rows = read_prompt_rows(recall_task.prompts[split])
        assert len(questions) == n
        assert sum(q.kind == RECALL for q in questions) == round(0.5 * n)
        assert [r["datasource"] for r in rows] == [q.kind for q in questions]
        assert {q.kind for q in questions} == {RECALL, NEEDS_TOOL}
        for q, row in zip(questions, rows, strict=True):
            assert row["prompt"] == q.question == NAMED_QUESTION.format(name=q.entity) != QUESTION
            searched = (*search_calls(q.entity), f"<answer>{q.answer}</answer>")
            assert q.gold_actions == ((f"<answer>{q.answer}</answer>",) if q.kind == RECALL else searched)
    reward = load_agent_config(recall_task.agent_config).reward
    assert (reward.search_penalty, reward.accuracy_weight, reward.format_weight) == (0.1, 1.0, 0.0)


def test_a_known_share_is_honoured_and_a_knob_without_the_preset_is_refused():
    assert preset_variant("recall_cost", known_share=0.25, search_penalty=None) == RecallCostConfig(0.25, 0.1)
    with pytest.raises(ValueError, match="--known-share: only the recall_cost preset"):
        preset_variant("default", known_share=0.3)
    with pytest.raises(ValueError, match="known_share must be in"):
        preset_variant("recall_cost", known_share=1.5)
    with pytest.raises(ValueError, match="choose from default, recall_cost"):
        preset_variant("nope")


def test_the_warm_start_teaches_the_held_out_recall_questions_and_no_needs_tool_one(recall_task):
    rows, questions = held_out_recall(recall_task)
    held_out = [q for s in ("eval", "select") for q in read_questions(recall_task.questions[s])]
    assert [q.id for q in questions] == [q.id for q in held_out if q.kind == RECALL]
    assert len(questions) == 4 + 2 and [r["prompt"] for r in rows] == [q.question for q in questions]
    assert all(r["datasource"] == RECALL for r in rows)


def test_the_teacher_answers_known_cities_directly_or_searches_its_share_and_is_unchanged_elsewhere(recall_task):
    known = next(q for q in read_questions(recall_task.questions["train"]) if q.kind == RECALL)
    rng = random.Random(0)
    turns = [teacher_actions(known, rng, 0.2, 0.45, known_search_share=0.3) for _ in range(2000)]
    assert all(protocol.parse_answer(t[-1]) == known.answer for t in turns)  # a known city is never misread
    searched = [t for t in turns if len(t) == 3]
    assert len(searched) / 2000 == pytest.approx(0.3, abs=0.03)
    assert all(len(t) in (1, 3) for t in turns)
    # a question without a kind (the default task) draws exactly as before the knob existed
    plain = dataclasses.replace(known, kind=None)
    a, b = random.Random(5), random.Random(5)
    assert [teacher_actions(plain, a, 0.2, 0.45) for _ in range(50)] == [
        teacher_actions(plain, b, 0.2, 0.45, known_search_share=0.9) for _ in range(50)
    ]


@pytest.mark.parametrize(
    ("answer", "searched", "reward"),
    [("Orsa", True, 0.9), ("Orsa", False, 1.0), ("Dunsa", True, 0.0), ("Dunsa", False, 0.0)],
)
def test_a_correct_answer_after_a_search_earns_one_minus_the_penalty(recall_task, answer, searched, reward):
    config = load_agent_config(recall_task.agent_config).reward
    result = asyncio.run(compute_reward(answer, Label("Orsa"), True, searched, config))
    assert result.reward == pytest.approx(reward)
    assert result.score == float(answer == "Orsa")  # the score stays `correct`


def test_the_default_task_charges_nothing_for_a_search(default_task):
    config = load_agent_config(default_task.agent_config).reward
    assert asyncio.run(compute_reward("Orsa", Label("Orsa"), True, True, config)).reward == 1.0


def _response(kind, calls: int, score: float, reward: float | None = None) -> dict:
    reward = score if reward is None else reward
    return {"datasource": kind, "scores": score, "reward": reward, "extra_logs": {"tool_calls": calls}}


# recall: 2 direct (1 right), 1 searched right (reward 0.9); needs_tool: 3 searched (2 right), 1 direct wrong
RESPONSES = [
    _response(RECALL, 0, 1.0),
    _response(RECALL, 0, 0.0),
    _response(RECALL, 2, 1.0, 0.9),
    _response(NEEDS_TOOL, 2, 1.0, 0.9),
    _response(NEEDS_TOOL, 2, 1.0, 0.9),
    _response(NEEDS_TOOL, 1, 0.0),
    _response(NEEDS_TOOL, 0, 0.0),
]


def test_summaries_split_by_question_kind():
    kinds = by_kind(RESPONSES)
    assert kinds[RECALL] == pytest.approx(
        dict(trajectories=3, accuracy=2 / 3, reward=1.9 / 3, tool_call_rate=1 / 3, reward_called=0.9,
             accuracy_called=1.0, accuracy_direct=0.5)
    )  # fmt: skip
    assert kinds[NEEDS_TOOL] == pytest.approx(
        dict(trajectories=4, accuracy=0.5, reward=1.8 / 4, tool_call_rate=0.75, reward_called=0.6,
             accuracy_called=2 / 3, accuracy_direct=0.0)
    )  # fmt: skip
    flat = summarize_responses(RESPONSES)
    assert flat["kind/needs_tool/tool_call_rate"] == 0.75 and flat["kind/recall/accuracy"] == pytest.approx(2 / 3)
    assert flat["tool_call_rate"] == pytest.approx(4 / 7)
    # asked for both kinds, a batch that drew one reports that one
    assert set(by_kind(RESPONSES[:3], [RECALL, NEEDS_TOOL])) == {RECALL}


def test_a_task_of_one_kind_keeps_its_summary_keys():
    one = [{**r, "datasource": "city"} for r in RESPONSES]
    assert by_kind(one) == {} and not any(k.startswith("kind/") for k in summarize_responses(one))
    before = {"sampled": one}
    assert "eval_by_kind_before" not in summarize(before, before, [])


def test_the_demo_report_gives_accuracy_and_tool_use_per_kind():
    after = [{**r, "extra_logs": {"tool_calls": 0}} for r in RESPONSES]  # every answer direct after RL
    for r in (*RESPONSES, *after):
        r["extra_logs"] |= {"turns": 1}
    summary = summarize({"sampled": RESPONSES}, {"sampled": after}, [])
    assert summary["eval_by_kind_before"][NEEDS_TOOL]["tool_call_rate"] == 0.75
    assert summary["eval_by_kind_after"][NEEDS_TOOL]["tool_call_rate"] == 0.0
    lines = format_summary({**summary, "eval_questions": 7}).splitlines()
    assert "  needs_tool questions       accuracy 0.500 -> 0.500, tool-call rate 0.750 -> 0.000" in lines


def test_recall_share_is_the_right_share_of_direct_answers_on_recall_questions():
    assert gates.recall_share(RESPONSES) == {"recall_share": 0.5, "direct_answers": 2, "recall_trajectories": 3}
    assert gates.recall_share(RESPONSES[2:])["recall_share"] == 0.0  # no direct answer: nothing recalled
    assert gates.check({"recall_share": 0.5})["recall_share"]["passed"]
    assert not gates.check({"recall_share": 0.49})["recall_share"]["passed"]


def _step(step: int, rate: float, reward: float, reward_called: float | None, n: int = 10) -> dict:
    p = "kind/needs_tool/"
    row = {"step": step, p + "trajectories": n, p + "tool_call_rate": rate, p + "reward": reward}
    return row | ({p + "reward_called": reward_called} if reward_called is not None else {})


def _collapsing(end_rate: float, step1: float = 0.9) -> list[dict]:
    """Ten steps: the rate goes from `step1` to `end_rate` over steps 8-10; trajectories that call earn 0.6."""
    return [_step(1, step1, 0.5, 0.6), *(_step(s, 0.7, 0.4, 0.6) for s in range(2, 8))] + [
        _step(s, end_rate, 0.3, 0.6) for s in (8, 9, 10)
    ]


def test_the_collapse_gate_passes_when_grpo_drops_a_call_that_would_pay():
    runs = {0: _collapsing(0.6), 1: _collapsing(0.7), 2: _collapsing(0.5)}
    gate = gates.collapse_gate(runs, start_rate=0.85)
    # drop = warm-start rate 0.85 - rate pooled over steps 8-10; advantage = 0.6 - 0.3
    assert gate["drops"] == pytest.approx([0.25, 0.15, 0.35])
    assert gate["value"] == pytest.approx(0.25) and gate["calling_advantage"] == pytest.approx(0.3)
    assert gate["passed"] and gate["failed_because"] == []
    assert gate["seeds"][0]["end_steps"] == [8, 9, 10] and gate["seeds"][0]["step1_rate"] == 0.9


def test_the_collapse_gate_pools_the_end_steps_by_trajectories_and_skips_steps_without_the_kind():
    steps = [_step(1, 1.0, 0.5, 0.6), _step(8, 0.5, 0.2, 0.4, n=30), {"step": 9}, _step(10, 0.0, 0.1, None, n=10)]
    run = gates.collapse_run(steps + [_step(11, 0.0, 0.0, None)], window=3)  # step 11 is past `within`
    assert run["end_steps"] == [1, 8, 10]
    assert run["end_rate"] == pytest.approx((10 * 1.0 + 30 * 0.5 + 0) / 50)
    assert run["drop"] == pytest.approx(1.0 - 0.5)  # start: the run's own step-1 rate
    assert run["reward"] == pytest.approx((5 + 6 + 1) / 50)
    assert run["reward_called"] == pytest.approx((10 * 0.6 + 15 * 0.4) / 25)  # step 10 had no call
    assert run["calling_advantage"] == pytest.approx(0.48 - 0.24)


def test_the_collapse_gate_fails_on_a_small_drop_a_useless_tool_or_too_few_seeds():
    small = gates.collapse_gate({s: _collapsing(0.8) for s in range(3)}, start_rate=0.85)
    assert not small["passed"] and small["value"] == pytest.approx(0.05)
    useless = [{**m, "kind/needs_tool/reward_called": 0.2} for m in _collapsing(0.3)]
    gate = gates.collapse_gate({s: useless for s in range(3)}, start_rate=0.85)
    assert not gate["passed"] and gate["calling_advantage"] == pytest.approx(-0.1)
    assert any("not > 0" in reason for reason in gate["failed_because"])
    two = gates.collapse_gate({0: _collapsing(0.3), 1: _collapsing(0.3)}, start_rate=0.85)
    assert not two["passed"] and two["failed_because"] == ["2 run(s) measured; the gate needs >= 3 GRPO seeds"]
    none = gates.collapse_gate({0: [{"step": 1}]})
    assert math.isnan(none["value"]) and not none["passed"]


def test_study_curves_and_tables_split_by_kind():
    metrics = [_step(1, 0.9, 0.5, 0.6), {"step": 2, "accuracy": 0.5}, _step(3, 0.4, 0.3, 0.6)]
    curves = run_curves(metrics)
    assert curves["needs_tool/tool_call_rate"] == [0.9, None, 0.4]
    base = dict(sampled_accuracy=0.5, greedy_accuracy=0.5, tool_call_rate=0.5, train_accuracy_mean=0.5, seconds=1)
    rows = [
        RunResult("ppo", s, **base, curves=curves, by_kind={NEEDS_TOOL: {"accuracy": 0.3, "tool_call_rate": r}})
        for s, r in ((0, 0.2), (1, 0.4))
    ]
    table = kinds_table(rows)
    assert "| GRPO | needs_tool | 2 | 0.300 ± 0.000 | 0.300 ± 1.271 | 0.400 ± 0.000 |" in table
    assert kinds_table([RunResult("ppo", 0, **base)]) == ""
    assert "by_kind" in rows[0].to_json() and "needs_tool/tool_call_rate" not in run_curves(metrics[1:2])


def test_the_command_lines_offer_the_presets_and_refuse_knobs_without_one(capsys):
    from openrlhf_tapo.cli import study

    args = study.parse_args(["--task-preset", "recall_cost", "--collapse-gate-only", "--seeds-grpo", "3"])
    assert args.arms == ["ppo"] and args.task_preset == "recall_cost"
    for argv, message in (
        (["--known-share", "0.3"], "only the recall_cost preset"),
        (["--known-search-share", "0.3"], "only the recall_cost preset"),
        (["--collapse-gate-only"], "add --task-preset recall_cost"),
        (["--task-preset", "recall"], "invalid choice"),
    ):
        with pytest.raises(SystemExit):
            study.parse_args(argv)
        assert message in capsys.readouterr().err


def test_the_collapse_gate_driver_runs_grpo_seeds_and_writes_both_gates(tmp_path):
    """A tiny seeded recall_cost study in collapse-gate mode: task, warm start, gates (recall_share, per-kind
    summaries), 2 GRPO seeds of 2 steps with per-kind metrics, collapse_gate.json; a second call runs nothing."""
    import torch

    from openrlhf_tapo.cli import study
    from openrlhf_tapo.runners.study_plan import run_dir_of
    from openrlhf_tapo.runners.study_runs import read_results

    argv = [
        "--out", str(tmp_path), "--task-preset", "recall_cost", "--collapse-gate-only", "--entities", "24",
        "--num-eval", "8", "--warm-steps", "5", "--warm-batch", "8", "--steps", "2", "--prompts-per-step", "4",
        "--n-samples", "2", "--eval-samples", "2", "--gate-prompts", "4", "--seeds-grpo", "2",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert study.main(argv) == 0
        measured = json.loads((tmp_path / "gates.json").read_text())
        assert "recall_share" in measured["checked"] and set(measured["eval_by_kind"]) == {RECALL, NEEDS_TOOL}
        results = read_results(tmp_path)
        assert sorted((r.arm, r.seed) for r in results) == [("ppo", 0), ("ppo", 1)]
        assert all(set(r.by_kind) == {RECALL, NEEDS_TOOL} for r in results)
        lines = (run_dir_of(tmp_path, "ppo", 0) / "metrics.jsonl").read_text().splitlines()
        assert all(any(k.startswith("kind/") for k in json.loads(line)) for line in lines) and len(lines) == 2
        gate = json.loads((tmp_path / "collapse_gate.json").read_text())
        assert set(gate["seeds"]) == {"0", "1"} and not gate["passed"]  # 2 seeds: the gate needs 3
        assert gate["start_rate"] == measured["train_by_kind"][NEEDS_TOOL]["tool_call_rate"]
        report = (tmp_path / "study.md").read_text()
        assert "| collapse |" in report and "| recall_share |" in report and "## Per question kind" in report
        mtime = (tmp_path / "results.jsonl").stat().st_mtime
        assert study.main(argv) == 0 and (tmp_path / "results.jsonl").stat().st_mtime == mtime
    finally:
        torch.set_num_threads(threads)
