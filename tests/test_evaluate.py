"""Evaluation harness: benchmark readers, scoring through the real agent/tools/reward, summary numbers, the CLI."""

import asyncio
import io
import json

import pytest
from PIL import Image

from openrlhf_tapo.eval.benchmarks import BenchmarkFormatError, detect_format, read_benchmark
from openrlhf_tapo.eval.evaluator import EvalConfig, evaluate, in_range
from openrlhf_tapo.eval.summary import EvalRecord, summarize_records, summary_markdown


def _png(tmp_path, name, colour=(200, 30, 30)):
    path = tmp_path / name
    Image.new("RGB", (32, 24), colour).save(path)
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------------------ readers


def test_mmsearch_jsonl_reads_images_relative_to_the_file_and_alternatives(tmp_path):
    _png(tmp_path, "q.png")
    path = _jsonl(
        tmp_path / "mmsearch.jsonl",
        [
            {"query": "Who made this?", "query_image": "q.png", "gt_answer": "Ada", "alternative_gt_answers": ["A."]},
            {"query": "News question", "gt_answer": "Bob", "alternative_gt_answers": []},
        ],
    )
    assert detect_format(path) == "mmsearch"
    a, b = read_benchmark(path)
    assert a.answers == ["Ada", "A."] and json.loads(a.label) == {"ground_truth": "Ada", "candidate_answers": ["A."]}
    assert Image.open(io.BytesIO(a.images[0])).size == (32, 24)  # encoded bytes, as the training data gives them
    assert b.images == [] and b.answers == ["Bob"]


def test_infoseek_image_id_ranges_and_splits(tmp_path):
    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "imgs", "oven_01.jpg")
    path = _jsonl(
        tmp_path / "infoseek.jsonl",
        [
            {
                "data_id": "d1",
                "image_id": "oven_01",
                "question": "When was it built?",
                "answer": ["1990"],
                "answer_eval": [{"wikidata": 1990, "range": [1989, 1991]}],
                "data_split": "val_unseen_question",
            }
        ],
    )
    (s,) = read_benchmark(path, "infoseek", image_root=tmp_path / "imgs")
    assert (s.id, s.split, s.ranges, s.answers) == ("d1", "val_unseen_question", [(1989.0, 1991.0)], ["1990"])
    with pytest.raises(BenchmarkFormatError, match="oven_01"):
        read_benchmark(path, "infoseek")  # without --image-root the image is not found, and the error says which


def test_simplevqa_is_judged_and_missing_fields_are_named(tmp_path):
    _png(tmp_path, "x.png")
    good = _jsonl(tmp_path / "svqa.jsonl", [{"image": "x.png", "question": "What colour?", "answer": "red"}])
    (s,) = read_benchmark(good, "simplevqa")
    assert s.judge and s.answers == ["red"]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"image": "x.png", "question": "What colour?"}])
    with pytest.raises(BenchmarkFormatError, match=r"bad.jsonl:1: missing field\(s\) \['answer'\]"):
        read_benchmark(bad, "simplevqa")


def test_mmsearch_r1_parquet_goes_through_the_agent_reader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(buf, format="JPEG")
    table = pa.table(
        {
            "prompt": [[{"content": "What is the country of origin of this food?", "role": "user"}]],
            "images": [[{"bytes": buf.getvalue()}]],
            "reward_model": [{"candidate_answers": '["Kingdom of Spain", "ES"]', "ground_truth": "Spain"}],
            "data_source": ["mmsearch_r1/infoseek_train_split"],
        }
    )
    pq.write_table(table, tmp_path / "fvqa.parquet")
    (s,) = read_benchmark(tmp_path / "fvqa.parquet")
    assert s.answers == ["Spain", "Kingdom of Spain", "ES"] and s.split == "mmsearch_r1/infoseek_train_split"
    assert s.images == [buf.getvalue()]


def test_in_range_reads_the_first_number():
    assert in_range("built in 1,990 AD", [(1989, 1991)])
    assert not in_range("1995", [(1989, 1991)]) and not in_range("no idea", [(0, 1)]) and not in_range(None, [])


# ------------------------------------------------------------------------------------------------------ summary


def _record(sid, split, exact, calls, errors=None, cache=0, answered=True, failed=False):
    return EvalRecord(
        sid,
        split,
        "q",
        ["a"],
        "a" if answered else None,
        {"exact_match": exact, "score": exact},
        0.9 * exact + 0.1,
        turns=sum(calls.values()) + 1,
        tool_calls=calls,
        tool_errors=errors or {},
        cache_hits=cache,
        error="RuntimeError: boom" if failed else None,
        attempted_calls=sum(calls.values()) + sum((errors or {}).values()),
    )


def test_summary_numbers_by_hand():
    records = [
        _record("1", "s1", 1.0, {"text_search": 2, "zoom": 1}, cache=1),
        _record("2", "s1", 0.0, {"text_search": 1}, errors={"bad_json": 1}),
        _record("3", "s2", 1.0, {}),
        _record("4", "s2", 0.0, {}, answered=False, failed=True),
    ]
    records[2].scores["infoseek"] = 1.0  # a metric that applies to one sample only
    s = summarize_records(records)
    assert s["n"] == 4 and s["accuracy"]["exact_match"] == 0.5 and s["accuracy"]["infoseek"] == 1.0
    assert s["accuracy_by_split"]["s1"] == {"n": 2, "exact_match": 0.5, "infoseek": 0.0, "score": 0.5}
    assert s["tool_calls"]["text_search"] == {"total": 3, "per_sample": 0.75}
    assert s["tool_calls_per_sample"] == 1.0 and s["tool_call_rate"] == 0.5
    assert s["turns_mean"] == (4 + 2 + 1 + 1) / 4 and s["answered_rate"] == 0.75
    assert s["tool_errors"] == {"bad_json": 1} and s["tool_call_attempts_per_sample"] == 5 / 4
    assert s["tool_call_attempt_rate"] == 0.5
    assert s["cache_hits"] == 1 and s["cache_hit_rate"] == 0.25 and s["failed_samples"] == 1
    assert s["failures"] == {}  # records without a first error (successes, or written before the field existed)
    records[1].failure, records[3].failure = "malformed_call", "no_answer"
    s = summarize_records(records)
    assert s["failures"] == {"malformed_call": 0.25, "no_answer": 0.25}
    md = summary_markdown(s)
    assert "| first error `malformed_call` (share of samples) | 0.2500 |" in md
    assert "| accuracy (exact_match) | 0.5000 |" in md and "| `text_search` calls | 3 (0.750 / sample) |" in md


# ------------------------------------------------------------------------------- the real agent on the tiny task


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
    from openrlhf_tapo.task.prepare import TaskConfig, prepare_task
    from openrlhf_tapo.task.questions import QuestionSetConfig

    config = TaskConfig(
        kb=KnowledgeBaseConfig(num_entities=5),
        questions=QuestionSetConfig(num_eval=3),
        vocab_size=400,
    )
    return prepare_task(tmp_path_factory.mktemp("task"), config, progress=lambda _: None)


def test_evaluate_scores_scripted_trajectories_through_the_real_agent(tiny_task):
    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.agent.executor import AgentExecutor
    from openrlhf_tapo.task.questions import read_questions
    from openrlhf_tapo.task.tiny_model import load_processor
    from openrlhf_tapo.task.warm_start import ScriptedEngine

    samples = read_benchmark(tiny_task.prompts["eval"])
    questions = read_questions(tiny_task.questions["eval"])
    gold = [list(q.gold_actions) for q in questions]  # image_search, text_search, answer
    turns = (
        gold[0]  # correct, two tool calls
        + [gold[1][0], "<answer>Nowhere</answer>"]  # one call, wrong answer
        + ['<tool_call>{"name": "zoom", </tool_call>', f"<answer>{questions[2].answer}</answer>"]  # bad JSON, right
    )
    processor = load_processor(tiny_task.model_dir)
    engine = ScriptedEngine(processor.tokenizer, turns)
    executor = AgentExecutor(load_agent_config(tiny_task.agent_config))
    seen = []

    async def run():
        try:
            return await evaluate(
                samples,
                executor,
                engine,
                processor,
                EvalConfig(concurrency=1, max_length=2048),
                lambda i, r: seen.append(i),
            )
        finally:
            await executor.runner.close()

    records = asyncio.run(run())
    assert [r.id for r in records] == [s.id for s in samples] and len(records) == 3  # sample order kept
    assert [r.scores["exact_match"] for r in records] == [1.0, 0.0, 1.0]
    assert [r.prediction for r in records] == [questions[0].answer, "Nowhere", questions[2].answer]
    assert records[0].tool_calls == {"image_search": 1, "text_search": 1} and records[0].turns == 3
    assert records[1].tool_calls == {"image_search": 1}
    assert records[2].tool_errors == {"bad_json": 1} and records[2].tool_calls == {}
    assert [r.attempted_calls for r in records] == [2, 1, 1]
    # the task's reward is exact match alone: a broken call before a right answer costs nothing
    assert records[0].reward == pytest.approx(1.0) and records[2].reward == pytest.approx(1.0)
    assert sorted(seen) == [0, 1, 2] and engine.turns == []
    s = summarize_records(records)
    assert s["accuracy"]["exact_match"] == pytest.approx(2 / 3) and s["tool_calls_per_sample"] == pytest.approx(1.0)
    # the one failure: image search only (its observation is the name, not the city), then a wrong answer
    assert [r.failure for r in records] == [None, "wrong_parameters", None]
    assert s["failures"] == {"wrong_parameters": pytest.approx(1 / 3)}


def test_cli_on_the_tiny_model_writes_records_and_summaries(tiny_task, tmp_path):
    from openrlhf_tapo.cli.evaluate import main

    out = tmp_path / "eval"
    argv = ["--model", str(tiny_task.model_dir), "--data", str(tiny_task.prompts["eval"]), "--out", str(out)]
    argv += ["--agent-config", str(tiny_task.agent_config), "--limit", "2", "--max-length", "3072", "--backend", "hf"]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(s.id for s in read_benchmark(tiny_task.prompts["eval"])[:2])
    assert all(r["error"] is None and r["turns"] >= 1 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and summary["format"] == "prompts" and "exact_match" in summary["accuracy"]
    assert "| samples | 2 |" in (out / "summary.md").read_text()


def test_cli_refuses_a_judged_benchmark_without_a_judge(tiny_task, tmp_path):
    from openrlhf_tapo.cli.evaluate import main

    _png(tmp_path, "x.png")
    data = _jsonl(tmp_path / "svqa.jsonl", [{"image": "x.png", "question": "What colour?", "answer": "red"}])
    argv = ["--model", str(tiny_task.model_dir), "--data", str(data), "--format", "simplevqa", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="--judge-url"):
        main([*argv, "--agent-config", str(tiny_task.agent_config)])


def test_vllm_backend_limits_images_per_request_to_the_agent_budget(monkeypatch):
    """vLLM's default of 999 items per modality makes it profile and reserve memory for that many images."""
    import sys
    import types

    from _agent_helpers import tiny_vlm_dir

    from openrlhf_tapo.eval import engines

    fake = types.ModuleType("vllm")
    fake.AsyncEngineArgs = lambda **kwargs: kwargs
    fake.AsyncLLMEngine = types.SimpleNamespace(from_engine_args=lambda args: args)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(engines, "real_vllm_available", lambda: True)
    engine, _, backend = engines.load_engine(tiny_vlm_dir(), "vllm", dtype="bfloat16", max_images=4)
    assert backend == "vllm" and engine.llm["limit_mm_per_prompt"] == {"image": 4}
    assert engine.llm["dtype"] == "bfloat16" and engine.llm["model"] == str(tiny_vlm_dir())
