"""GiGPO's step-level advantage on hand-computed batches: step groups, returns, normalisation, singletons, spans."""

import math

import pytest
import torch
from _turn_layout import WIDTH, turn_mask

from openrlhf_tapo.adapter.stage.advantages import openrlhf_group_advantages
from openrlhf_tapo.algorithms.gigpo import GiGPOConfig, gigpo_advantages, search_turns, step_groups
from openrlhf_tapo.algorithms.tapo import ToolCall
from openrlhf_tapo.algorithms.turns import Turn

A_OBS, B_OBS = ("text_search", '{"query": "a"}', "fact a"), ("text_search", '{"query": "b"}', "fact b")


def _turns(traj, states):
    # Turn k of a trajectory covers columns [4k, 4k + 2): columns 4k + 2, 4k + 3 play the masked tool response.
    return [Turn(traj, k, (4 * k, 4 * k + 2), state) for k, state in enumerate(states)]


def _batch():
    """Prompt group 0: trajectories 0 and 1 search a then answer (rewards 1, 0); trajectory 2 searches b, then a,
    then answers (reward 1). Prompt group 1: trajectory 3, alone, answers directly (reward 1)."""
    turns = (
        _turns(0, [(), (A_OBS,)])
        + _turns(1, [(), (A_OBS,)])
        + _turns(2, [(), (B_OBS,), (B_OBS, A_OBS)])
        + _turns(3, [()])
    )
    episode = torch.tensor([0.5, -1.25, 0.5, 0.0])[:, None].expand(4, WIDTH).contiguous()
    return episode, turn_mask([2, 2, 3, 1]), [0, 0, 0, 1], [1.0, 0.0, 1.0, 1.0], turns


def _turn_values(advantages, row, count):
    return [advantages[row, 4 * k : 4 * k + 2].tolist() for k in range(count)]


def test_hand_computed_mean_norm():
    episode, mask, groups, rewards, turns = _batch()
    out, stats = gigpo_advantages(episode, mask, groups, rewards, turns, GiGPOConfig(gamma=0.5, omega=1.0))
    # Turn 0 of group 0 (state ()): returns 0.5 * 1, 0.5 * 0, 0.25 * 1 -> mean 0.25 -> +0.25, -0.25, 0.
    # Turn 1 after fact a (trajectories 0, 1): returns 1, 0 -> +0.5, -0.5. Trajectory 2's later states are singletons.
    # Trajectory 3 is alone in its prompt group: its one step group is a singleton.
    assert _turn_values(out, 0, 2) == [[0.75, 0.75], [1.0, 1.0]]
    assert _turn_values(out, 1, 2) == [[-1.5, -1.5], [-1.75, -1.75]]
    assert _turn_values(out, 2, 3) == [[0.5, 0.5]] * 3
    assert _turn_values(out, 3, 1) == [[0.0, 0.0]]
    # Columns outside every turn (the tool responses) keep the episode advantage bit for bit.
    assert torch.equal(out[:, 2:4], episode[:, 2:4]) and torch.equal(out[:, 10:], episode[:, 10:])
    assert stats["turns"] == 8 and stats["step_groups"] == 5 and stats["step_group_size_max"] == 3
    assert stats["singleton_share"] == pytest.approx(3 / 8)
    assert stats["mean_abs_step_advantage"] == pytest.approx((0.25 + 0.25 + 0.5 + 0.5) / 8)


def test_mean_std_norm_divides_by_the_unbiased_std_plus_epsilon():
    episode, mask, groups, rewards, turns = _batch()
    config = GiGPOConfig(gamma=0.5, mode="mean_std_norm", epsilon=1e-6)
    out, _ = gigpo_advantages(episode.double(), mask, groups, rewards, turns, config)
    std0 = math.sqrt((0.25**2 + 0.25**2 + 0.0) / 2)  # returns 0.5, 0, 0.25 around 0.25
    std1 = math.sqrt((0.5**2 + 0.5**2) / 1)  # returns 1, 0 around 0.5
    assert out[0, 0].item() == pytest.approx(0.5 + 0.25 / (std0 + 1e-6), rel=1e-12)
    assert out[1, 4].item() == pytest.approx(-1.25 - 0.5 / (std1 + 1e-6), rel=1e-12)
    assert out[2, 0].item() == 0.5


def test_omega_zero_is_grpo_bit_for_bit():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    grpo = openrlhf_group_advantages(rewards, n_samples=4)[:, None].expand(8, WIDTH).contiguous()
    mask = turn_mask([2, 2, 3, 1, 2, 2, 3, 1])
    states = [[(), (A_OBS,)], [(), (A_OBS,)], [(), (B_OBS,), (B_OBS, A_OBS)], [()]] * 2
    turns = [t for i, s in enumerate(states) for t in _turns(i, s)]
    groups = [0] * 4 + [1] * 4
    out, stats = gigpo_advantages(grpo, mask, groups, rewards, turns, GiGPOConfig(omega=0.0))
    assert torch.equal(out, grpo) and out.dtype == grpo.dtype and out is not grpo
    assert stats["mean_abs_step_advantage"] > 0  # the step term exists; omega = 0 only leaves it out
    changed, _ = gigpo_advantages(grpo, mask, groups, rewards, turns, GiGPOConfig(omega=1.0))
    assert not torch.equal(changed, grpo)


def test_equal_rewards_and_lengths_change_nothing_but_unequal_lengths_do():
    mask = turn_mask([2, 2, 2])
    episode = torch.zeros(3, WIDTH)
    turns = _turns(0, [(), (A_OBS,)]) + _turns(1, [(), (A_OBS,)]) + _turns(2, [(), (B_OBS,)])
    out, stats = gigpo_advantages(episode, mask, [0, 0, 0], [1.0, 1.0, 1.0], turns, GiGPOConfig(gamma=0.9))
    assert torch.equal(out, episode) and stats["mean_abs_step_advantage"] == 0
    # All rewards 0: every return is 0 whatever the lengths.
    turns3 = _turns(0, [(), (A_OBS,)]) + _turns(1, [()]) + _turns(2, [(), (B_OBS,), (B_OBS, A_OBS)])
    out, _ = gigpo_advantages(episode, turn_mask([2, 1, 3]), [0, 0, 0], [0.0] * 3, turns3, GiGPOConfig(gamma=0.9))
    assert torch.equal(out, episode)
    # Equal rewards, a trajectory that ends early: at the shared first state the shorter one has the larger return.
    out, _ = gigpo_advantages(episode, turn_mask([2, 1, 3]), [0, 0, 0], [1.0] * 3, turns3, GiGPOConfig(gamma=0.9))
    returns = [0.9, 1.0, 0.81]  # gamma^(n - 1) for n = 2, 1, 3
    mean = sum(returns) / 3
    assert [out[i, 0].item() for i in range(3)] == pytest.approx([r - mean for r in returns])
    assert out[0, 4].item() == 0 and out[2, 4].item() == 0 and out[2, 8].item() == 0  # later states: singletons


def test_anchor_differing_only_in_an_observation_is_another_step_group():
    a_other = ("text_search", '{"query": "a"}', "fact a, updated")
    turns = _turns(0, [(), (A_OBS,)]) + _turns(1, [(), (a_other,)])
    episode, mask = torch.zeros(2, WIDTH), turn_mask([2, 2])
    out, stats = gigpo_advantages(episode, mask, [0, 0], [1.0, 0.0], turns, GiGPOConfig(gamma=1.0))
    assert out[0, 4].item() == 0 and out[1, 4].item() == 0  # two singletons
    assert out[0, 0].item() == pytest.approx(0.5) and out[1, 0].item() == pytest.approx(-0.5)  # shared first state
    assert stats["step_groups"] == 3
    # The reference's similarity option: near-identical states fall into one cluster.
    out, stats = gigpo_advantages(
        episode, mask, [0, 0], [1.0, 0.0], turns, GiGPOConfig(gamma=1.0, similarity_threshold=0.9)
    )
    assert stats["step_groups"] == 2
    assert out[0, 4].item() == pytest.approx(0.5) and out[1, 4].item() == pytest.approx(-0.5)


def test_step_groups_never_cross_prompt_groups():
    turns = _turns(0, [()]) + _turns(1, [()]) + _turns(2, [()])
    assert step_groups([0, 0, 1], turns, None) == [0, 0, 1]
    assert step_groups([0, 0, 1], turns, 0.5) == [0, 0, 1]


def test_masked_tokens_inside_a_turn_are_untouched():
    episode, mask, groups, rewards, turns = _batch()
    mask[0, 1] = False
    out, _ = gigpo_advantages(episode, mask, groups, rewards, turns, GiGPOConfig(gamma=0.5))
    assert out[0, 1].item() == episode[0, 1].item() and out[0, 0].item() != episode[0, 0].item()


def test_search_turns_builds_information_states():
    def call(traj, turn, query, obs, succeeded=True, at=0):
        span = (4 * turn, 4 * turn + 2)
        return ToolCall(traj, "text_search", {"query": query}, (span[0] + at, span[0] + at + 1), span, turn, obs,
                        succeeded)  # fmt: skip

    spans = [[(0, 2), (4, 6), (8, 10)], [(0, 2), (4, 6)]]
    calls = [call(0, 0, "a", "fact a"), call(0, 0, "b", "fact b", at=1), call(0, 1, "c", "error: timeout", False),
             call(1, 0, "a", "fact a")]  # fmt: skip
    turns = search_turns(spans, calls)
    assert [(t.traj, t.turn, t.span) for t in turns] == [(0, 0, (0, 2)), (0, 1, (4, 6)), (0, 2, (8, 10)),
                                                         (1, 0, (0, 2)), (1, 1, (4, 6))]  # fmt: skip
    fact_a = ("text_search", '{"query": "a"}', "fact a")
    both = (fact_a, ("text_search", '{"query": "b"}', "fact b"))
    assert [t.state for t in turns] == [(), both, both, (), (fact_a,)]  # the failed call adds nothing


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"omega": -1.0}, "gigpo.omega"),
        ({"gamma": 1.5}, "gigpo.gamma"),
        ({"mode": "std"}, "gigpo.mode"),
        ({"epsilon": 0.0}, "gigpo.epsilon"),
        ({"similarity_threshold": 0.0}, "gigpo.similarity_threshold"),
        ({"omega": float("nan")}, "gigpo.omega"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GiGPOConfig(**kwargs)


def test_bad_turn_records_are_refused():
    episode, mask = torch.zeros(2, WIDTH), turn_mask([2, 2])
    config = GiGPOConfig()
    with pytest.raises(ValueError, match="expected 0..1"):
        gigpo_advantages(episode, mask, [0, 0], [1, 0], [Turn(0, 0, (0, 2)), Turn(0, 2, (4, 6))], config)
    with pytest.raises(ValueError, match="twice"):
        gigpo_advantages(episode, mask, [0, 0], [1, 0], [Turn(0, 0, (0, 2)), Turn(0, 0, (4, 6))], config)
    with pytest.raises(ValueError, match="outside the batch"):
        gigpo_advantages(episode, mask, [0, 0], [1, 0], [Turn(2, 0, (0, 2))], config)
    with pytest.raises(ValueError, match="half-open"):
        gigpo_advantages(episode, mask, [0, 0], [1, 0], [Turn(0, 0, (4, 2))], config)
    with pytest.raises(ValueError, match="rewards has 1"):
        gigpo_advantages(episode, mask, [0, 0], [1], [], config)
