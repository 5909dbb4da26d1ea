"""The advantage estimators that act after the group advantages, chosen by name, and the order they compose in.

Each estimator is a pure function of the per-token advantages, the action mask and what it reads about the batch
(`CreditInputs`), with its own config dataclass whose fields generate its `--<name>.<field>` flags:

| name          | config           | function                           | what it changes                            |
|---------------|------------------|------------------------------------|--------------------------------------------|
| `gigpo`       | GiGPOConfig      | gigpo.gigpo_advantages             | + omega * step advantage on every turn     |
| `turn_reward` | TurnRewardConfig | turn_reward.turn_reward_advantages | + lam * turn advantage up to the first hit |
| `tapo`        | TAPOConfig       | tapo.tapo_correct                  | negative credit of matched call turns -> 0 |

Composition order (the order of `ESTIMATORS`, defined here once): the additive terms reshape the group advantage
first, GiGPO then the turn reward; TAPO runs last because it reads each trajectory's advantage (to tell failing
trajectories and the witnesses' mean advantage) and only moves negative tokens toward 0, so it must see the final
additive credit and nothing may push its corrected tokens back below or above afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from openrlhf_tapo.algorithms.gigpo import GiGPOConfig, gigpo_advantages
from openrlhf_tapo.algorithms.tapo import TAPOConfig, ToolCall, tapo_correct
from openrlhf_tapo.algorithms.turn_reward import TurnRewardConfig, turn_reward_advantages
from openrlhf_tapo.algorithms.turns import Turn


@dataclass(frozen=True)
class CreditInputs:
    """What the estimators read about a batch of B trajectories besides its advantages."""

    group_ids: Sequence[Hashable]  # [B] prompt group of each trajectory
    rewards: Sequence[float]  # [B] outcome reward (GiGPO's step return)
    success: Sequence[bool]  # [B] success flags (TAPO's witnesses)
    calls: Sequence[ToolCall] = ()  # tool calls located in advantage columns (TAPO)
    turns: Sequence[Turn] = ()  # every assistant turn with its anchor state (GiGPO, turn_reward)
    first_hit: Sequence[int | None] | None = None  # [B] turn whose observation first held the answer (turn_reward)


Apply = Callable[[Tensor, Tensor, CreditInputs, Any], tuple[Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Estimator:
    config: type
    apply: Apply
    needs: tuple[str, ...]  # CreditInputs fields that must be given (non-empty)


def _gigpo(advantages, mask, inputs: CreditInputs, config: GiGPOConfig):
    return gigpo_advantages(advantages, mask, inputs.group_ids, inputs.rewards, inputs.turns, config)


def _turn_reward(advantages, mask, inputs: CreditInputs, config: TurnRewardConfig):
    return turn_reward_advantages(advantages, mask, inputs.group_ids, inputs.turns, inputs.first_hit, config)


def _tapo(advantages, mask, inputs: CreditInputs, config: TAPOConfig):
    return tapo_correct(advantages, mask, inputs.group_ids, inputs.success, inputs.calls, config)


ESTIMATORS: dict[str, Estimator] = {
    "gigpo": Estimator(GiGPOConfig, _gigpo, needs=("turns",)),
    "turn_reward": Estimator(TurnRewardConfig, _turn_reward, needs=("turns", "first_hit")),
    "tapo": Estimator(TAPOConfig, _tapo, needs=()),
}


def apply_estimators(
    advantages: Tensor, action_mask: Tensor, inputs: CreditInputs, configs: Mapping[str, Any]
) -> tuple[Tensor, dict[str, dict[str, float]]]:
    """Run the estimators named in `configs` (name -> its config) on `advantages` [B, T], in the registry's order.

    Returns the final advantages and each estimator's statistics under its name. The input is untouched."""
    unknown = sorted(set(configs) - ESTIMATORS.keys())
    if unknown:
        raise ValueError(f"unknown advantage estimator(s) {unknown}; choose from {list(ESTIMATORS)}")
    stats: dict[str, dict[str, float]] = {}
    out = advantages
    for name, estimator in ESTIMATORS.items():
        if name not in configs:
            continue
        config = configs[name]
        if not isinstance(config, estimator.config):
            raise TypeError(f"{name} takes a {estimator.config.__name__}, got {type(config).__name__}")
        missing = [need for need in estimator.needs if not getattr(inputs, need)]
        if missing and len(inputs.group_ids):
            raise ValueError(f"{name} needs CreditInputs.{' and '.join(missing)}, which the caller did not give")
        out, stats[name] = estimator.apply(out, action_mask, inputs, config)
    return (out.clone() if out is advantages else out), stats
