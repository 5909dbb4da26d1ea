"""A turn-reward baseline (MT-GRPO style): a verifiable reward for the search turns, added to the group advantage.

The outcome advantage tells a trajectory whether its final answer was right. The turn reward tells it whether its
searching found the answer: h_i = 1 when one of trajectory i's tool observations contains the label's answer (the
caller decides that with the one answer normaliser, `agent.reward.substring_match`), else 0. Pure torch + stdlib.

Definitions (B trajectories, T advantage columns):
- first_hit[i]: the turn whose tool observation first contained the answer, or None.
- Turn advantage: h_i normalised over the trajectories of its prompt group, (h_i - mean) / (std + epsilon) with the
  unbiased std (`mean_std_norm`, MT-GRPO's) or h_i - mean (`mean_norm`); a group of one, or a group whose h are all
  equal, gets exactly 0.
- It is added with weight lam to the action tokens of the turns up to and including the first hit; a trajectory
  without a hit gets it on every turn (its search never found the answer, and its answer was written without it).
  lam = 0 returns the advantages unchanged (bit for bit).

The bias of per-turn normalisation (veRL RFC #7244): normalising turn returns per turn index makes every extra turn
another draw of a zero-mean term, and a policy that chooses when to stop can farm it. Here each trajectory has ONE
turn reward, normalised over the trajectories of its group, never per turn index, so taking more turns adds no
advantage term; the turns that receive it are the ones before the information arrived.

Statistics: hit_rate (share of trajectories with a hit), turn_advantage_nonzero_share, mean_abs_turn_advantage,
credited_turns_mean (turns per trajectory that received the term).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from openrlhf_tapo.algorithms.config_fields import doc
from openrlhf_tapo.algorithms.gc_pause import cyclic_gc_paused
from openrlhf_tapo.algorithms.tapo import advantage_shape, per_trajectory
from openrlhf_tapo.algorithms.turns import MODES, Turn, add_on_turns, check_turns, group_normalised


@dataclass(frozen=True)
class TurnRewardConfig:
    """Turn-reward options; each field maps 1:1 to the flag `--turn_reward.<field>`."""

    lam: float = field(
        default=0.5,
        metadata=doc("weight of the turn advantage added to the group advantage (MT-GRPO's port: 0.5); 0 disables it"),
    )
    mode: str = field(
        default="mean_std_norm",
        metadata=doc(
            "normalisation of the turn reward within the prompt group: mean_std_norm (MT-GRPO) or mean_norm",
            choices=MODES,
        ),
    )
    epsilon: float = field(default=1e-6, metadata=doc("added to the std under mean_std_norm (> 0)"))

    def __post_init__(self) -> None:
        for name in ("lam", "epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"turn_reward.{name} must be a finite number, got {value!r}")
        if self.lam < 0:
            raise ValueError(f"turn_reward.lam must be >= 0 (0 disables the turn term), got {self.lam!r}")
        if self.epsilon <= 0:
            raise ValueError(f"turn_reward.epsilon must be > 0, got {self.epsilon!r}")
        if self.mode not in MODES:
            raise ValueError(f"turn_reward.mode must be one of {MODES}, got {self.mode!r}")


@cyclic_gc_paused()
def turn_reward_advantages(
    advantages: Tensor,
    action_mask: Tensor,
    group_ids: Sequence[Hashable] | Tensor,
    turns: Sequence[Turn],
    first_hit: Sequence[int | None],
    config: TurnRewardConfig,
) -> tuple[Tensor, dict[str, float]]:
    """Copy of `advantages` [B, T] with lam * turn advantage on each trajectory's turns up to its first hit (every
    turn without a hit), and the statistics. The input is untouched."""
    batch, width = advantage_shape(advantages, action_mask)
    group_ids = per_trajectory(group_ids, "group_ids", batch)
    first_hit = per_trajectory(first_hit, "first_hit", batch)
    counts = check_turns(turns, batch, width)
    for i, hit in enumerate(first_hit):
        if hit is not None and not 0 <= hit < counts[i]:
            raise ValueError(f"first_hit[{i}] = {hit} is not one of trajectory {i}'s turns 0..{counts[i] - 1}")

    hits = [float(hit is not None) for hit in first_hit]
    turn_adv = group_normalised(hits, group_ids, config.mode, config.epsilon)
    last = [counts[i] - 1 if hit is None else hit for i, hit in enumerate(first_hit)]

    credited = [turn_adv[t.traj] if t.turn <= last[t.traj] else 0.0 for t in turns]
    corrected = add_on_turns(advantages, action_mask, turns, credited, config.lam)

    stats = {
        "hit_rate": math.fsum(hits) / batch if batch else 0.0,
        "turn_advantage_nonzero_share": sum(a != 0 for a in turn_adv) / batch if batch else 0.0,
        "mean_abs_turn_advantage": math.fsum(map(abs, turn_adv)) / batch if batch else 0.0,
        "credited_turns_mean": sum(v != 0 for v in credited) / batch if batch else 0.0,
    }
    return corrected, stats
