"""Reward: normalisation, EM / substring / F1 by hand, MMSearch-R1 weighting, labels, the LLM judge over HTTP."""

import json

import pytest
from aiohttp import web

from openrlhf_tapo.agent.config import AgentConfig, JudgeConfig, RewardConfig
from openrlhf_tapo.agent.reward import (
    Label,
    LLMJudge,
    compute_reward,
    exact_match,
    normalize_answer,
    parse_label,
    substring_match,
    token_f1,
)


def test_normalize_answer_squad_style():
    assert normalize_answer("  The  Eiffel-Tower, Paris! ") == "eiffeltower paris"
    assert normalize_answer("A cat and an apple") == "cat and apple"
    assert normalize_answer("Theatre") == "theatre"  # articles only as whole words


def test_answers_are_normalised_like_tapo_queries():
    # One rule for both: full-width letters and punctuation, decomposed accents, zero-width spaces.
    assert normalize_answer("ＰＡＲＩＳ！") == "paris"
    assert normalize_answer("Cafe\u0301 de\u200b Flore") == normalize_answer("Café de Flore") == "café de flore"
    assert normalize_answer("São Paulo — Brazil") == "são paulo brazil"


def test_matches_by_hand():
    golds = ["Gautama Buddha", "Shakyamuni"]
    assert exact_match("the gautama buddha.", golds)
    assert not exact_match("Buddha", golds)
    assert substring_match("It is Gautama Buddha, clearly", golds)
    assert not substring_match("Buddha", golds)  # a fragment of the gold is not the gold
    assert not substring_match("Shakyamunis", golds)  # word boundaries
    assert not exact_match("", golds) and not substring_match("", golds)
    # F1: pred "buddha statue" vs "gautama buddha": common 1, P = 1/2, R = 1/2 -> 0.5
    assert token_f1("Buddha statue", golds) == pytest.approx(0.5)
    assert token_f1("Shakyamuni", golds) == 1.0
    assert token_f1("nothing", golds) == 0.0


def test_parse_label_forms():
    mm = {"ground_truth": "Spain", "candidate_answers": '["Kingdom of Spain", "ES"]', "style": "rule"}
    assert parse_label(mm) == Label("Spain", ("Kingdom of Spain", "ES"))
    assert parse_label(json.dumps(mm)) == Label("Spain", ("Kingdom of Spain", "ES"))
    assert parse_label(json.dumps({"answer": "x", "candidates": ["y"]})) == Label("x", ("y",))
    assert parse_label("Paris") == Label("Paris")
    assert parse_label(["a", "b"]) == Label("a", ("b",))
    assert parse_label("{not json") == Label("{not json")
    with pytest.raises(ValueError, match="ground_truth"):
        parse_label({"candidate_answers": ["a"]})
    # empty-after-normalisation golds never match anything
    assert Label("Spain", ("the", "ES")).golds() == ["Spain", "ES"]


async def test_mmsearch_r1_weighting_by_hand():
    cfg = AgentConfig.from_dict({"reward": {"preset": "mmsearch_r1"}}).reward
    label = Label("Spain", ("Kingdom of Spain",))
    # correct + searched + format: 0.9 * 1 * 0.9 + 0.1 = 0.91
    r = await compute_reward("kingdom of spain", label, True, True, cfg)
    assert r.reward == pytest.approx(0.91) and r.score == 1.0 and r.exact == 1.0
    # correct without search: 0.9 + 0.1 = 1.0
    assert (await compute_reward("Spain", label, True, False, cfg)).reward == pytest.approx(1.0)
    # wrong but well formed: format only
    r = await compute_reward("France", label, True, True, cfg)
    assert r.reward == pytest.approx(0.1) and r.score == 0.0
    # no answer at all
    r = await compute_reward(None, label, False, True, cfg)
    assert (r.reward, r.score, r.f1) == (0.0, 0.0, 0.0)
    # candidates off: the alias no longer counts
    no_cand = RewardConfig(use_candidates=False)
    assert (await compute_reward("Kingdom of Spain", label, True, False, no_cand)).score == 0.0


async def test_substring_and_f1_modes():
    label = Label("Tuileries Palace")
    sub = RewardConfig(match="substring", accuracy_weight=1.0, format_weight=0.0, search_penalty=0.0)
    assert (await compute_reward("the Tuileries Palace in Paris", label, True, False, sub)).reward == 1.0
    f1 = AgentConfig.from_dict({"reward": {"preset": "f1"}}).reward
    r = await compute_reward("Palace of Tuileries garden", label, True, False, f1)
    # pred tokens: palace of tuileries garden (4), gold: tuileries palace (2), common 2 -> P .5, R 1 -> F1 2/3
    assert r.score == pytest.approx(2 / 3) and r.reward == pytest.approx(2 / 3)


def test_reward_config_errors_name_the_key():
    with pytest.raises(ValueError, match="reward.match"):
        AgentConfig.from_dict({"reward": {"match": "fuzzy"}})
    with pytest.raises(ValueError, match="unknown preset"):
        AgentConfig.from_dict({"reward": {"preset": "nope"}})
    with pytest.raises(ValueError, match="unknown key"):
        AgentConfig.from_dict({"reward": {"weight": 1}})
    with pytest.raises(ValueError, match="must be <= 1"):
        AgentConfig.from_dict({"reward": {"accuracy_weight": 0.95, "format_weight": 0.1}})
    with pytest.raises(ValueError, match="judge.model"):
        AgentConfig.from_dict({"reward": {"judge": {"url": "http://x"}}})


@pytest.fixture
async def judge_server():
    """An OpenAI-compatible endpoint on loopback: replies from a script, records requests and headers."""
    state = {"replies": [], "requests": [], "auth": []}

    async def completions(request):
        state["requests"].append(await request.json())
        state["auth"].append(request.headers.get("Authorization"))
        status, content = state["replies"].pop(0) if state["replies"] else (200, "yes")
        if status != 200:
            return web.Response(status=status, text="busy")
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": content}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    state["url"] = f"http://127.0.0.1:{port}/v1"
    yield state
    await runner.cleanup()


async def test_judge_fallback_overrides_rules_and_sends_key(judge_server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret")
    cfg = RewardConfig(judge=JudgeConfig(url=judge_server["url"], model="m", api_key_env="TEST_JUDGE_KEY"))
    judge = LLMJudge(cfg.judge)
    label = Label("Gautama Buddha")
    judge_server["replies"] = [(200, "Yes.")]
    r = await compute_reward("the Buddha", label, True, True, cfg, question="Who?", judge=judge)
    assert (r.score, r.judged) == (1.0, 1.0) and r.reward == pytest.approx(0.91)
    assert judge_server["auth"] == ["Bearer sk-secret"]
    sent = judge_server["requests"][0]
    assert sent["model"] == "m" and "the Buddha" in sent["messages"][0]["content"]
    # fallback mode: a rule-correct answer is not sent to the judge
    await compute_reward("Gautama Buddha", label, True, True, cfg, judge=judge)
    assert len(judge_server["requests"]) == 1


async def test_judge_failures_fall_back_to_rules(judge_server):
    cfg = RewardConfig(judge=JudgeConfig(url=judge_server["url"], model="m", mode="always", attempts=2))
    judge = LLMJudge(cfg.judge)
    judge_server["replies"] = [(503, ""), (200, "maybe")]  # 5xx, then an unreadable verdict
    r = await compute_reward("Spain", Label("Spain"), True, False, cfg, judge=judge)
    assert (r.score, r.judged, r.judge_errors) == (1.0, 0.0, 1.0)  # rules kept, failure counted
    judge_server["replies"] = [(429, ""), (200, "no")]  # retried after a 429, then "no" overrides EM
    r = await compute_reward("Spain", Label("Spain"), True, False, cfg, judge=judge)
    assert (r.score, r.judged) == (0.0, 1.0) and r.reward == pytest.approx(0.1)


async def test_judge_unreachable_is_not_raised():
    cfg = JudgeConfig(url="http://127.0.0.1:9/v1", model="m", attempts=1, timeout_s=2)
    assert await LLMJudge(cfg).judge("q", "a", ["b"]) is None


def test_agent_yaml_documents_the_defaults_and_env_var_loading(tmp_path, monkeypatch):
    from pathlib import Path

    from openrlhf_tapo.agent.config import CONFIG_ENV, load_agent_config

    shipped = Path(__file__).resolve().parents[1] / "configs" / "agent.yaml"
    assert load_agent_config(shipped) == AgentConfig()
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert load_agent_config() == AgentConfig()
    custom = tmp_path / "a.yaml"
    custom.write_text("agent:\n  max_turns: 2\n  reward: {preset: exact_match}\n")
    monkeypatch.setenv(CONFIG_ENV, str(custom))
    config = load_agent_config()
    assert config.max_turns == 2 and (config.reward.accuracy_weight, config.reward.format_weight) == (1.0, 0.0)
    custom.write_text("max_turn: 2\n")
    with pytest.raises(ValueError, match=r"a.yaml.*unknown key\(s\) max_turn"):
        load_agent_config()
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match=rf"\${CONFIG_ENV}\) .*missing.yaml: no such file"):
        load_agent_config()
