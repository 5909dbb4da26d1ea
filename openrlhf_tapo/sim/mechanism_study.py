"""The mechanism study's design: its arms, which arm each TAPO arm is compared with, and its grid of configurations.

Fixed before any run (docs/results.md §1 records the command and date): 5 regimes x group sizes 8 and 4 x 10 arms
at lr 0.2, seeds 0..19 paired across arms (seed s draws the same random numbers in every arm), plus an lr
sensitivity check of GRPO vs GRPO + TAPO in regime (a).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from openrlhf_tapo.algorithms.tapo import TAPOConfig
from openrlhf_tapo.sim.env import REGIMES
from openrlhf_tapo.sim.train import Arm, TrainConfig

_TAPO = TAPOConfig()  # the project's defaults (beta 0.8, theta 0.8, alpha_min 0.25, group scope, turn span)

ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("grpo", "ppo"),
        Arm("grpo+tapo", "ppo", _TAPO),
        Arm("grpo+tapo_b0.4", "ppo", replace(_TAPO, beta=0.4)),
        Arm("grpo+tapo_b1.2", "ppo", replace(_TAPO, beta=1.2)),
        Arm("grpo+tapo_nosupport", "ppo", replace(_TAPO, use_support=False)),
        Arm("grpo+tapo_noclip", "ppo", replace(_TAPO, clip_at_zero=False)),
        Arm("sapo", "sapo"),
        Arm("sapo+tapo", "sapo", _TAPO),
        Arm("gspo_token", "gspo_token"),
        Arm("gspo_token+tapo", "gspo_token", _TAPO),
    )
}
BASE_ARM = {"ppo": "grpo", "sapo": "sapo", "gspo_token": "gspo_token"}  # loss -> its arm without TAPO
GROUP_SIZES = (8, 4)
SEEDS = tuple(range(20))
STUDY_LR = TrainConfig().lr
SENSITIVITY = ("a_useful_weak_reader", 8, (0.1, 0.3), ("grpo", "grpo+tapo"))  # regime, group size, lrs, arms


def base_of(arm: str) -> str | None:
    """The arm a TAPO arm is paired with (same loss, no TAPO); None for a base arm."""
    spec = ARMS[arm]
    return None if spec.tapo is None else BASE_ARM[spec.loss]


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid: every seed of one arm in one regime at one group size and lr."""

    regime: str
    group_size: int
    lr: float
    arm: str

    @property
    def name(self) -> str:
        return f"{self.regime}__g{self.group_size}__lr{self.lr:g}__{self.arm}"


def grid(regimes=tuple(REGIMES), group_sizes=GROUP_SIZES, arms=tuple(ARMS), sensitivity: bool = True) -> list[Cell]:
    """Every cell of the study, base arms first within each (regime, group size) so partial studies stay paired."""
    cells = [Cell(r, g, STUDY_LR, a) for r in regimes for g in group_sizes for a in arms]
    regime, group, lrs, sens_arms = SENSITIVITY
    if sensitivity and regime in regimes:
        cells += [Cell(regime, group, lr, a) for lr in lrs for a in sens_arms if a in arms]
    return cells
