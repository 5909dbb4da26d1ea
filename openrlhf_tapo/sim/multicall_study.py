"""Part 2 of the mechanism study: its arms, their pairing and its grid (docs/results.md §1, part 2).

Fixed before any TAPO run of part 2 (the pre-registration commit in docs/results.md records it): the four regimes
of sim/multicall.py plus part 1's regime (a), group size 8, seeds 0..19 paired across arms.
- SGD at the study's lr 0.2, in the four part-2 regimes: GRPO, GRPO + TAPO (β 0.8) and the project's options one at a
  time: β 0.4 / 1.2, no support factor, no clip, turn window 0, outcome-verified witnesses (exact / overlap).
- The optimiser check, in all five regimes: GRPO ± TAPO with Adam and AdamW (torch defaults, weight decay 0.01) at
  lr 0.01, 0.03 and 0.1, beside SGD GRPO ± TAPO at lr 0.2.
Added later (issue 25, pre-registered in docs/results.md §1 part 2 before they ran): GiGPO's step advantage
(GiGPOConfig defaults: omega 1, gamma 0.95, mean_norm) with SGD in all five regimes, without and with TAPO.
"""

from __future__ import annotations

from dataclasses import replace

from openrlhf_tapo.algorithms.gigpo import GiGPOConfig
from openrlhf_tapo.algorithms.tapo import TAPOConfig
from openrlhf_tapo.sim.env import REGIMES as PART1_REGIMES
from openrlhf_tapo.sim.mechanism_study import STUDY_LR, Cell
from openrlhf_tapo.sim.multicall import REGIMES as MULTICALL_REGIMES
from openrlhf_tapo.sim.train import Arm

_TAPO = TAPOConfig()
REGIMES = {**MULTICALL_REGIMES, "a_useful_weak_reader": PART1_REGIMES["a_useful_weak_reader"]}
SAFETY_ARMS = (
    Arm("grpo+tapo_b0.4", "ppo", replace(_TAPO, beta=0.4)),
    Arm("grpo+tapo_b1.2", "ppo", replace(_TAPO, beta=1.2)),
    Arm("grpo+tapo_nosupport", "ppo", replace(_TAPO, use_support=False)),
    Arm("grpo+tapo_noclip", "ppo", replace(_TAPO, clip_at_zero=False)),
    Arm("grpo+tapo_window0", "ppo", replace(_TAPO, turn_window=0)),
    Arm("grpo+tapo_obs_exact", "ppo", replace(_TAPO, obs_check="exact")),
    Arm("grpo+tapo_obs_overlap", "ppo", replace(_TAPO, obs_check="overlap")),
)
OPTIMIZER_ARMS = tuple(
    arm
    for opt in ("adam", "adamw")
    for arm in (Arm(f"grpo_{opt}", "ppo", None, opt), Arm(f"grpo_{opt}+tapo", "ppo", _TAPO, opt))
)
STEP_CREDIT_ARMS = (
    Arm("grpo+gigpo", "ppo", None, gigpo=GiGPOConfig()),
    Arm("grpo+gigpo+tapo", "ppo", _TAPO, gigpo=GiGPOConfig()),
)
ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (Arm("grpo", "ppo"), Arm("grpo+tapo", "ppo", _TAPO), *SAFETY_ARMS, *OPTIMIZER_ARMS, *STEP_CREDIT_ARMS)
}
BASE_ARM = {"sgd": "grpo", "adam": "grpo_adam", "adamw": "grpo_adamw"}  # optimizer -> its arm without TAPO
ADAPTIVE_LRS = (0.01, 0.03, 0.1)
GROUP_SIZE = 8
SEEDS = tuple(range(20))


def base_of(arm: str) -> str | None:
    """The arm an arm is paired with: a TAPO arm with the same recipe without TAPO (same optimizer; GiGPO + TAPO
    with GiGPO), GiGPO with GRPO; None for a base arm."""
    spec = ARMS[arm]
    if spec.gigpo is not None:
        return "grpo+gigpo" if spec.tapo is not None else BASE_ARM[spec.optimizer]
    return None if spec.tapo is None else BASE_ARM[spec.optimizer]


def lrs_of(arm: str) -> tuple[float, ...]:
    return (STUDY_LR,) if ARMS[arm].optimizer == "sgd" else ADAPTIVE_LRS


def grid(regimes=tuple(REGIMES), group_sizes=(GROUP_SIZE,), arms=tuple(ARMS)) -> list[Cell]:
    """Every cell of part 2, base arms before their TAPO arms. The safety arms run in the part-2 regimes only
    (part 1 measured them in (a)); the SGD and optimizer arms run in every regime."""
    return [
        Cell(regime, group, lr, arm)
        for regime in regimes
        for group in group_sizes
        for arm in arms
        if regime in MULTICALL_REGIMES or ARMS[arm] not in SAFETY_ARMS
        for lr in lrs_of(arm)
    ]
