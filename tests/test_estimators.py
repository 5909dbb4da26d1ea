"""The estimator registry: names, composition order, and that composing equals running the estimators in turn."""

import pytest
import torch

from openrlhf_tapo.algorithms.estimators import ESTIMATORS, CreditInputs, apply_estimators
from openrlhf_tapo.algorithms.gigpo import GiGPOConfig, gigpo_advantages, search_turns
from openrlhf_tapo.algorithms.tapo import TAPOConfig, ToolCall, tapo_correct
from openrlhf_tapo.algorithms.turn_reward import TurnRewardConfig, turn_reward_advantages

WIDTH = 8


def _batch():
    """One prompt group of 4: every trajectory searches "a" in turn 0 and answers in turn 1; 0 and 2 succeed."""
    spans = [[(0, 2), (4, 6)]] * 4
    calls = [
        ToolCall(i, "text_search", {"query": "a"}, (0, 2), (0, 2), 0, "fact a" if i < 3 else "nothing")
        for i in range(4)
    ]
    rewards = [1.0, 0.0, 1.0, 0.0]
    episode = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None].expand(4, WIDTH).contiguous()
    mask = torch.zeros(4, WIDTH, dtype=torch.bool)
    mask[:, 0:2] = mask[:, 4:6] = True
    inputs = CreditInputs(
        group_ids=[0] * 4,
        rewards=rewards,
        success=[r == 1 for r in rewards],
        calls=calls,
        turns=search_turns(spans, calls),
        first_hit=[0, 0, 0, None],
    )
    return episode, mask, inputs


def test_registry_names_and_order():
    assert list(ESTIMATORS) == ["gigpo", "turn_reward", "tapo"]


def test_composition_equals_the_estimators_in_registry_order():
    episode, mask, x = _batch()
    configs = {"tapo": TAPOConfig(), "gigpo": GiGPOConfig(gamma=0.9), "turn_reward": TurnRewardConfig(lam=0.5)}
    out, stats = apply_estimators(episode, mask, x, configs)
    step1, _ = gigpo_advantages(episode, mask, x.group_ids, x.rewards, x.turns, configs["gigpo"])
    step2, _ = turn_reward_advantages(step1, mask, x.group_ids, x.turns, x.first_hit, configs["turn_reward"])
    step3, tapo_stats = tapo_correct(step2, mask, x.group_ids, x.success, x.calls, configs["tapo"])
    assert torch.equal(out, step3) and stats["tapo"] == tapo_stats and set(stats) == set(configs)
    # The order matters: TAPO first, then the additive terms, gives other advantages on this batch.
    first, _ = tapo_correct(episode, mask, x.group_ids, x.success, x.calls, configs["tapo"])
    other, _ = gigpo_advantages(first, mask, x.group_ids, x.rewards, x.turns, configs["gigpo"])
    other, _ = turn_reward_advantages(other, mask, x.group_ids, x.turns, x.first_hit, configs["turn_reward"])
    assert not torch.equal(out, other)
    # TAPO never turns a token positive after the additive terms: failing trajectory 1's call turn stays <= 0.
    assert out[1, 0:2].max().item() <= 0


def test_no_estimator_returns_a_copy():
    episode, mask, x = _batch()
    out, stats = apply_estimators(episode, mask, x, {})
    assert torch.equal(out, episode) and out is not episode and stats == {}


def test_errors_name_the_problem():
    episode, mask, x = _batch()
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        apply_estimators(episode, mask, x, {"gae": None})
    with pytest.raises(TypeError, match="gigpo takes a GiGPOConfig"):
        apply_estimators(episode, mask, x, {"gigpo": TAPOConfig()})
    no_hits = CreditInputs(x.group_ids, x.rewards, x.success, x.calls, x.turns, None)
    with pytest.raises(ValueError, match="turn_reward needs CreditInputs.first_hit"):
        apply_estimators(episode, mask, no_hits, {"turn_reward": TurnRewardConfig()})
