"""The bundled task: knowledge base, questions, prompt rows, gold traces through the real agent, InProcessStrategy."""

import json
import random
from types import SimpleNamespace

import pytest
import torch

from openrlhf_tapo.adapter.inprocess.trainer import InProcessStrategy
from openrlhf_tapo.agent import protocol
from openrlhf_tapo.agent.config import AgentConfig
from openrlhf_tapo.agent.data import openrlhf_rows
from openrlhf_tapo.agent.executor import AgentExecutor
from openrlhf_tapo.agent.reward import parse_label
from openrlhf_tapo.search.local_index import LocalIndex
from openrlhf_tapo.task.knowledge_base import CITIES, SYLLABLES, KnowledgeBase, KnowledgeBaseConfig
from openrlhf_tapo.task.prepare import INSTRUCTIONS, TaskConfig, agent_config_data, agent_sample, tokenizer_corpus
from openrlhf_tapo.task.questions import (
    QuestionSetConfig,
    generate_questions,
    read_questions,
    teacher_actions,
    write_questions,
)
from openrlhf_tapo.task.tiny_model import build_processor, build_tokenizer
from openrlhf_tapo.task.warm_start import content_responses, content_spans, scripted_traces
from openrlhf_tapo.tools import canonical_params


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    kb = KnowledgeBase.generate(KnowledgeBaseConfig(num_entities=40, seed=3))
    index_dir = kb.build_index(root)
    splits = generate_questions(kb, QuestionSetConfig(num_eval=8, seed=5), root)
    return SimpleNamespace(root=root, kb=kb, index=LocalIndex.load(index_dir), index_dir=index_dir, splits=splits)


def test_knowledge_base_is_a_function_of_the_seed():
    a = KnowledgeBase.generate(KnowledgeBaseConfig(num_entities=6, seed=1))
    b = KnowledgeBase.generate(KnowledgeBaseConfig(num_entities=6, seed=1))
    c = KnowledgeBase.generate(KnowledgeBaseConfig(num_entities=6, seed=2))
    assert a.entities == b.entities
    assert a.entities != c.entities
    assert a.draw(a.entities[0]).tobytes() == b.draw(b.entities[0]).tobytes()
    assert len({e.name for e in a.entities}) == 6
    for e in a.entities:  # a name is two syllable tokens; the two cities differ
        assert e.name[:2] in SYLLABLES and e.name[2:] in SYLLABLES and e.city != e.other_city


def test_bad_sizes_are_refused_with_the_limit():
    with pytest.raises(ValueError, match="num_entities"):
        KnowledgeBaseConfig(num_entities=len(SYLLABLES) ** 2).validate()
    with pytest.raises(ValueError, match="num_eval"):
        QuestionSetConfig(num_eval=10).validate(10)


def test_permuted_base_moves_every_home_city_and_keeps_the_rest():
    kb = KnowledgeBase.generate(KnowledgeBaseConfig(num_entities=50, seed=4))
    perm = kb.permuted(7)
    for e, p in zip(kb.entities, perm.entities, strict=True):
        assert p.city not in (e.city, e.other_city)
        assert (p.name, p.other_city, p.signature) == (e.name, e.other_city, e.signature)


def test_image_search_finds_the_entity_of_every_question_image(built):
    from PIL import Image

    for questions in built.splits.values():
        for q in questions:
            hits = built.index.search_image(Image.open(built.root / q.image).convert("RGB"), 2)
            assert hits[0].id == q.entity_id


def test_text_search_on_the_name_returns_the_answer_and_a_distractor(built):
    for e in built.kb.entities:
        hits = built.index.search_text(e.name, 2)
        assert {h.id for h in hits} == {e.profile_id, e.news_id}
        text = " ".join(h.text for h in hits)
        assert f"based in {e.city}" in text and f"branch in {e.other_city}" in text


def test_eval_entities_are_held_out_and_asked_once(built, tmp_path):
    train, held_out = ({q.entity_id for q in built.splits[s]} for s in ("train", "eval"))
    assert len(held_out) == 8 and not train & held_out
    assert len(train) + len(held_out) == len(built.kb.entities)
    paths = write_questions(built.splits, tmp_path)
    assert read_questions(paths["train"]) == built.splits["train"]


def test_the_select_split_is_held_out_apart_from_eval_and_optional(built, tmp_path):
    splits = generate_questions(built.kb, QuestionSetConfig(num_eval=8, seed=5, num_select=6), tmp_path)
    train, held_out, select = ({q.entity_id for q in splits[s]} for s in ("train", "eval", "select"))
    assert len(select) == 6 and not select & held_out and not select & train
    assert splits["eval"] == built.splits["eval"]  # the reported questions do not move
    assert len(train) + len(held_out) + len(select) == len(built.kb.entities)
    assert "select" not in built.splits  # num_select 0: the two splits exactly as before
    with pytest.raises(ValueError, match="num_select"):
        QuestionSetConfig(num_eval=8, num_select=32).validate(40)


def test_gold_traces_are_valid_calls_and_answers(built):
    for q in built.splits["train"]:
        entity = built.kb.by_id[q.entity_id]
        *calls, answer = q.gold_actions
        assert protocol.parse_answer(answer) == q.answer == entity.city
        parsed = [protocol.parse_tool_calls(c)[0] for c in calls]
        assert all(p.ok and canonical_params(p.name, p.arguments) is not None for p in parsed)
        assert [p.name for p in parsed] == ["image_search", "text_search"]
        assert parsed[1].arguments["query"] == entity.name
        assert set(q.choices) == set(CITIES)


def test_weak_teacher_rates_match_its_settings(built):
    q = built.splits["train"][0]
    rng = random.Random(0)
    turns = [teacher_actions(q, rng, direct_share=0.3, misread_share=0.4) for _ in range(4000)]
    direct = [t for t in turns if len(t) == 1]
    searched = [t for t in turns if len(t) == 3]
    assert len(direct) + len(searched) == 4000
    assert len(direct) / 4000 == pytest.approx(0.3, abs=0.03)
    misread = sum(protocol.parse_answer(t[-1]) == q.distractor for t in searched) / len(searched)
    assert misread == pytest.approx(0.4, abs=0.03)
    assert all(list(t) == list(q.gold_actions) for t in searched if protocol.parse_answer(t[-1]) == q.answer)


def _rows(built, questions, tmp_path):
    return openrlhf_rows([agent_sample(q, built.root, i) for i, q in enumerate(questions)], tmp_path / "images")


def test_prompt_rows_go_through_the_agent_data_converter(built, tmp_path):
    q = built.splits["eval"][0]
    (row,) = _rows(built, [q], tmp_path)
    assert set(row) == {"prompt", "label", "images", "datasource"}
    assert row["prompt"] == q.question
    assert parse_label(row["label"]).ground_truth == q.answer
    assert json.loads(row["label"])["candidate_answers"] == []
    with open(row["images"][0], "rb") as copied:
        assert copied.read() == (built.root / q.image).read_bytes()


def test_gold_traces_through_the_real_agent_get_full_reward_and_read_the_tools(built, tmp_path):
    config = TaskConfig()
    agent_config = AgentConfig.from_dict(agent_config_data(built.index_dir, config))
    questions = built.splits["train"][:6]
    tokenizer = build_tokenizer(tokenizer_corpus(built.kb, questions), 512, [*CITIES, *SYLLABLES])
    processor = build_processor(tokenizer)
    from vllm import SamplingParams

    sp = SamplingParams(temperature=1.0, max_tokens=None, skip_special_tokens=False, logprobs=None)
    rows = _rows(built, questions, tmp_path)
    executor = AgentExecutor(agent_config)
    responses = scripted_traces(executor, rows, [list(q.gold_actions) for q in questions], processor, sp, 2048)
    for q, r in zip(questions, responses, strict=True):
        assert r["reward"] == pytest.approx(1.0) and r["scores"] == 1.0
        assert r["extra_logs"]["tool_calls"] == 2 and r["extra_logs"]["errors"] == 0
        assert len(r["action_ranges"]) == 3
        text = tokenizer.decode(r["observation_tokens"], skip_special_tokens=False)
        assert text.startswith(f"<|im_start|>system\n{INSTRUCTIONS}<|im_end|>")  # compact prompt, no schema block
        observations = text.split("<|im_start|>user\n<tool_response>")
        assert q.entity in observations[1] and "URL" not in observations[1]
        assert f"based in {q.answer}" in observations[2] and f"branch in {q.distractor}" in observations[2]
        assert r["mm_train_inputs"]["image_grid_thw"].shape[0] == 2  # the question image + the image-search hit
        # a name is the same two tokens in the observation and in the call that copies it
        name_ids = tokenizer.encode(q.entity, add_special_tokens=False)
        assert len(name_ids) == 2 and tokenizer.encode(f' "{q.entity}"', add_special_tokens=False)[-3:-1] == name_ids
    # the warm start's content tokens: the image label, the name in the query, the answer city, nothing else
    turns = [list(q.gold_actions) for q in questions]
    for q, r in zip(questions, content_responses(responses, turns, tokenizer), strict=True):
        ids = r["observation_tokens"]
        assert [tokenizer.decode(ids[a:b]) for a, b in r["action_ranges"]] == ["img_0", q.entity, q.answer]


def test_content_spans_are_argument_values_and_answers():
    call = '<tool_call>{"name": "text_search", "arguments": {"query": "ZUDE", "k": 2}}</tool_call>'
    (span,) = content_spans(call)
    assert call[span[0] : span[1]] == "ZUDE"
    assert content_spans("<answer>Brisa</answer>") == [(8, 13)]
    assert content_spans('<tool_call>{"name": "x", </tool_call>') == []  # a broken call has no content


def test_inprocess_strategy_accumulates_and_clips_like_deepspeed():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    start = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    strategy = InProcessStrategy(args=None, accumulated_gradient=2, max_norm=1e9)
    xs = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])]
    for i, x in enumerate(xs):
        loss = model(x).sum()
        strategy.backward(loss, model, opt)
        strategy.optimizer_step(opt, model, None)
        if i == 0:
            assert torch.equal(model.weight, start)  # accumulation boundary not reached
    # mean of the two micro-batch gradients (DeepSpeed's 1/gas scaling): [0.5, 1.0, 0]
    assert torch.allclose(model.weight, start - torch.tensor([[0.5, 1.0, 0.0]]))
    assert strategy.get_grad_norm(model) == pytest.approx((0.25 + 1.0) ** 0.5)
    assert strategy.optimizer_steps == 1

    clipped = InProcessStrategy(args=None, accumulated_gradient=1, max_norm=0.5)
    model.weight.grad = None
    before = model.weight.detach().clone()
    clipped.backward(model(torch.tensor([[3.0, 4.0, 0.0]])).sum(), model, opt)
    clipped.optimizer_step(opt, model, None)
    assert clipped.get_grad_norm(model) == pytest.approx(5.0)  # reported before clipping
    assert torch.allclose(before - model.weight, torch.tensor([[0.3, 0.4, 0.0]]))  # applied after clipping to 0.5
