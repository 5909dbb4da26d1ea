"""The turn-reward baseline on hand-computed batches: the hit reward's group normalisation and where it is added."""

import math

import pytest
import torch
from _turn_layout import WIDTH, turn_mask

from openrlhf_tapo.algorithms.turn_reward import TurnRewardConfig, turn_reward_advantages
from openrlhf_tapo.algorithms.turns import Turn


def _turns(counts):
    # Turn k of a trajectory covers columns [4k, 4k + 2).
    return [Turn(traj, k, (4 * k, 4 * k + 2)) for traj, count in enumerate(counts) for k in range(count)]


def test_hand_computed_turn_advantage_up_to_the_first_hit():
    episode = torch.tensor([0.5, -0.5, 0.5, -0.5], dtype=torch.float64)[:, None].expand(4, WIDTH).contiguous()
    counts, first_hit = [3, 3, 3, 1], [0, None, 1, None]
    config = TurnRewardConfig(lam=0.5, mode="mean_std_norm", epsilon=1e-6)
    out, stats = turn_reward_advantages(episode, turn_mask(counts), [0] * 4, _turns(counts), first_hit, config)
    # h = 1, 0, 1, 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) -> turn advantage +-0.5 / (std + eps).
    step = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert out[0, 0].item() == pytest.approx(0.5 + 0.5 * step)  # the hit turn
    assert out[0, 4].item() == 0.5 and out[0, 8].item() == 0.5  # after the hit: outcome advantage only
    assert [out[1, 4 * k].item() for k in range(3)] == pytest.approx([-0.5 - 0.5 * step] * 3)  # no hit: every turn
    assert [out[2, 4 * k].item() for k in range(3)] == pytest.approx([0.5 + 0.5 * step] * 2 + [0.5])
    assert out[3, 0].item() == pytest.approx(-0.5 - 0.5 * step)  # a direct answer, no search: its only turn
    assert torch.equal(out[:, 2:4], episode[:, 2:4])  # tool-response columns untouched
    assert stats["hit_rate"] == 0.5 and stats["turn_advantage_nonzero_share"] == 1.0
    assert stats["credited_turns_mean"] == (1 + 3 + 2 + 1) / 4
    assert stats["mean_abs_turn_advantage"] == pytest.approx(step)


def test_mean_norm_and_groups():
    episode = torch.zeros(4, WIDTH, dtype=torch.float64)
    counts, first_hit = [1, 1, 1, 1], [0, None, None, None]
    out, _ = turn_reward_advantages(
        episode,
        turn_mask(counts),
        [0, 0, 1, 1],
        _turns(counts),
        first_hit,
        TurnRewardConfig(lam=1.0, mode="mean_norm"),
    )
    # Group 0: h = 1, 0 -> +0.5, -0.5. Group 1: h = 0, 0 -> all equal -> 0.
    assert [out[i, 0].item() for i in range(4)] == [0.5, -0.5, 0.0, 0.0]


def test_lam_zero_and_equal_hits_change_nothing():
    episode = torch.randn(3, WIDTH)
    counts = [2, 2, 2]
    out, _ = turn_reward_advantages(
        episode, turn_mask(counts), [0] * 3, _turns(counts), [0, None, 1], TurnRewardConfig(lam=0.0)
    )
    assert torch.equal(out, episode) and out is not episode
    out, stats = turn_reward_advantages(
        episode, turn_mask(counts), [0] * 3, _turns(counts), [0, 1, 1], TurnRewardConfig()
    )
    assert torch.equal(out, episode) and stats["turn_advantage_nonzero_share"] == 0


def test_more_turns_earn_no_more_turn_advantage_per_trajectory():
    """The RFC #7244 bias: with a per-trajectory turn reward, a trajectory that searches longer without finding gets
    the same per-token term as a short one; the term does not grow with the number of turns."""
    episode = torch.zeros(3, WIDTH, dtype=torch.float64)
    counts, first_hit = [1, 3, 2], [None, None, 0]
    out, _ = turn_reward_advantages(episode, turn_mask(counts), [0] * 3, _turns(counts), first_hit, TurnRewardConfig())
    assert out[0, 0].item() == out[1, 0].item() == out[1, 4].item() == out[1, 8].item() < 0


def test_bad_inputs_are_refused():
    episode, counts = torch.zeros(2, WIDTH), [2, 2]
    with pytest.raises(ValueError, match="first_hit\\[1\\] = 2"):
        turn_reward_advantages(episode, turn_mask(counts), [0, 0], _turns(counts), [0, 2], TurnRewardConfig())
    with pytest.raises(ValueError, match="first_hit has 1"):
        turn_reward_advantages(episode, turn_mask(counts), [0, 0], _turns(counts), [0], TurnRewardConfig())
    for kwargs in ({"lam": -0.1}, {"epsilon": 0}, {"mode": "x"}, {"lam": True}):
        with pytest.raises(ValueError, match="turn_reward."):
            TurnRewardConfig(**kwargs)
