"""The counterfactual check of the bundled task (`task/gates.py`), end to end on a small seeded task.

Two rule-based policies play the agent through the real executor, tools and local index: a READER (image search,
text search on the name it was shown, then the city of the profile passage) and a MEMORISER (image search, then
the home city it memorised for that name, no text search; a name it has not memorised it reads like the reader).
On the original base both are always right, so accuracy cannot tell them apart; on the permuted base the reader
follows the tools (tool-following 1) and the memoriser does not (0). A memoriser of the TRAINING facts only (what a
policy trained on them could learn) passes the held-out ratio, the gate before 2026-12-06, and must fail the gates
on training entities. A trained policy's value is measured by the study's gates (docs/results.md §3).
"""

import asyncio
import re

import pytest

from openrlhf_tapo.agent.config import load_agent_config
from openrlhf_tapo.agent.executor import AgentExecutor
from openrlhf_tapo.agent.hf_engine import CompletionOutput, RequestOutput
from openrlhf_tapo.task.gates import (
    GATES,
    check,
    counterfactual_rows,
    counterfactual_values,
    final_answer,
    tool_following,
)
from openrlhf_tapo.task.knowledge_base import KnowledgeBase, KnowledgeBaseConfig
from openrlhf_tapo.task.prepare import TaskConfig, counterfactual_answers, prepare_task, read_prompt_rows
from openrlhf_tapo.task.questions import QuestionSetConfig, read_questions, search_calls
from openrlhf_tapo.task.tiny_model import load_processor


class RulePolicy:
    """The vLLM-actor `generate` contract, answering from the decoded context by a fixed rule."""

    def __init__(self, tokenizer, memory: dict[str, str] | None = None):
        self.tokenizer = tokenizer
        self.memory = memory or {}  # name -> city it answers without reading; empty: a reader

    def act(self, context: str) -> str:
        observations = context.split("<tool_response>")[1:]
        if not observations:
            return search_calls("")[0]  # image_search(img_0)
        name = re.search(r"\] <\|vision_start\|>.*<\|vision_end\|> (\w+)", observations[0]).group(1)
        if name in self.memory:
            return f"<answer>{self.memory[name]}</answer>"
        if len(observations) == 1:
            return search_calls(name)[1]
        return "<answer>" + re.search(r"based in (\w+)\.", observations[1]).group(1) + "</answer>"

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None) -> RequestOutput:
        text = self.act(self.tokenizer.decode(prompt_token_ids, skip_special_tokens=False))
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return RequestOutput(list(prompt_token_ids), [CompletionOutput(0, text, ids, "stop", None)])


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    config = TaskConfig(kb=KnowledgeBaseConfig(num_entities=30, seed=5), questions=QuestionSetConfig(num_eval=8))
    paths = prepare_task(tmp_path_factory.mktemp("cf"), config, progress=lambda _: None)
    return config, paths


def _answers(agent_yaml, rows, processor, policy) -> tuple[list[str | None], list[float]]:
    from vllm import SamplingParams

    executor = AgentExecutor(load_agent_config(agent_yaml))
    sp = SamplingParams(temperature=1.0, max_tokens=None, skip_special_tokens=False)

    async def run():
        try:
            return await asyncio.gather(
                *(
                    executor.execute(r["prompt"], r["label"], sp, 512, processor, policy, images=r["images"])
                    for r in rows
                )
            )
        finally:
            await executor.runner.close()

    responses = asyncio.run(run())
    return [final_answer(r, processor.tokenizer) for r in responses], [float(r["scores"]) for r in responses]


def test_the_counterfactual_check_tells_a_reader_from_a_memoriser(task):
    config, paths = task
    processor = load_processor(paths.model_dir)
    rows = read_prompt_rows(paths.prompts["eval"])
    original = [q.answer for q in read_questions(paths.questions["eval"])]
    flipped = counterfactual_answers(paths.root, config)
    assert all(a != b for a, b in zip(original, flipped, strict=True))  # every eval fact changes
    memory = {e.name: e.city for e in KnowledgeBase.generate(config.kb).entities}
    reader, memoriser = RulePolicy(processor.tokenizer), RulePolicy(processor.tokenizer, memory)

    for policy in (reader, memoriser):  # on the original base, both are always right
        answers, scores = _answers(paths.agent_config, rows, processor, policy)
        assert answers == original and scores == [1.0] * len(rows)

    answers, scores = _answers(paths.counterfactual_agent_config, rows, processor, reader)
    assert answers == flipped and scores == [0.0] * len(rows)  # the label is the original fact
    assert tool_following(answers, flipped, original) == {
        "tool_following": 1.0,
        "answers_tool_fact": 1.0,
        "answers_memorised_fact": 0.0,
        "answers": len(rows),
    }
    answers, _ = _answers(paths.counterfactual_agent_config, rows, processor, memoriser)
    assert tool_following(answers, flipped, original)["tool_following"] == 0.0


def test_the_gates_fail_a_policy_that_memorised_its_training_facts(task):
    config, paths = task
    processor = load_processor(paths.model_dir)
    heldout = counterfactual_rows(paths.root, config, "eval", read_prompt_rows(paths.prompts["eval"]))
    trained = counterfactual_rows(paths.root, config, "train", read_prompt_rows(paths.prompts["train"])[:10])
    assert len(heldout.rows) == 8 and len(trained.rows) == 10
    assert all(a != b for a, b in zip(trained.original, trained.permuted, strict=True))  # every train fact changes
    train_facts = {q.entity: q.answer for q in read_questions(paths.questions["train"])}
    memoriser = RulePolicy(processor.tokenizer, train_facts)  # reads every entity it was not trained on

    def gates(policy) -> tuple[dict, dict]:
        following = [
            tool_following(_answers(paths.counterfactual_agent_config, cf.rows, processor, policy)[0], cf.permuted,
                           cf.original)
            for cf in (heldout, trained)
        ]  # fmt: skip
        return counterfactual_values(*following), following[0]

    values, old = gates(RulePolicy(processor.tokenizer))
    assert values == {"follows_tools_heldout": 1.0, "follows_tools_train": 1.0, "tool_following_train": 1.0}
    assert all(g["passed"] for g in check(values).values())

    values, old = gates(memoriser)
    assert old == {"tool_following": 1.0, "answers_tool_fact": 1.0, "answers_memorised_fact": 0.0, "answers": 8}
    assert old["tool_following"] >= 0.8  # the held-out ratio alone (the gate before 2026-12-06) passed it
    assert values == {"follows_tools_heldout": 1.0, "follows_tools_train": 0.0, "tool_following_train": 0.0}
    failed = {name for name, g in check(values).items() if not g["passed"]}
    assert failed == {"follows_tools_train", "tool_following_train"}
    assert "tool_following" not in GATES  # kept as a field, not gated
