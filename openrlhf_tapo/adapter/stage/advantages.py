"""OpenRLHF 0.11.2's own advantage stage on outcome rewards, for callers outside its Ray trainer (the simulation).

`RemoteExperienceMaker.compute_advantages_and_returns` runs as written on one `Experience` that holds every
trajectory with a one-token action mask: with gamma = 1 and the reward on the last action token, every token of a
trajectory carries the same advantage, so one column is that trajectory's advantage. Groups are consecutive blocks
of n rows, as in OpenRLHF's rollout order.
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import torch
from torch import Tensor

from openrlhf_tapo.adapter.stage.openrlhf_args import parse_openrlhf_args


@lru_cache(maxsize=16)
def _experience_maker(n_samples: int, estimator: str):
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    args = parse_openrlhf_args(
        [
            "--actor.model_name_or_path", "unused",
            "--algo.advantage.estimator", estimator,
            "--rollout.n_samples_per_prompt", str(n_samples),
            "--actor.num_gpus_per_node", "1",
        ]
    )  # fmt: skip
    # The advantage stage reads only strategy.args and kl_ctl.value (no KL in the reward here).
    return RemoteExperienceMaker(None, None, None, None, SimpleNamespace(value=0.0), SimpleNamespace(args=args), None)


def openrlhf_group_advantages(rewards: Tensor, n_samples: int, estimator: str = "group_norm") -> Tensor:
    """One advantage per trajectory [N] from OpenRLHF's own code; `rewards` [N] holds groups of `n_samples` rows."""
    from openrlhf.trainer.ppo_utils.experience import Experience

    if rewards.dim() != 1 or len(rewards) % n_samples:
        raise ValueError(f"rewards must be [N] with N a multiple of n_samples={n_samples}, got {tuple(rewards.shape)}")
    count = len(rewards)
    experience = Experience(
        sequences=torch.ones(count, 2, dtype=torch.long),
        action_mask=torch.ones(count, 1, dtype=torch.bool),
        rewards=rewards.clone(),
        kl=torch.zeros(count, 1, dtype=rewards.dtype),
        index=list(range(count)),
        info={},
    )
    (out,) = _experience_maker(n_samples, estimator).compute_advantages_and_returns([experience])
    return out.advantages[:, 0]
