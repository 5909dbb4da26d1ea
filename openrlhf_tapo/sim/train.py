"""Group RL on the simulation's tabular policy, many independent runs (seeds) at once.

One step, for every run: sample G rollouts of each question -> group advantages (the caller's function: the CLI
passes OpenRLHF's own group_norm) broadcast to every acted token -> the arm's advantage estimators from the
registry (`algorithms.estimators.apply_estimators`: GiGPO when the arm has it, then TAPO, per run) on the per-token
advantages -> `epochs` gradient steps on the policy loss (`algorithms.policy_loss`, token-mean per run).
Part 1 of the study uses plain SGD, which keeps the size of an advantage in the update (what TAPO changes); part 2
adds Adam and AdamW arms (`Arm.optimizer`), which rescale each parameter's update by its own gradient history.
Both are elementwise, so the runs stacked in one tensor stay independent.
The environment is anything with the `Environment` methods: a part-1 `env.Regime` or a part-2
`multicall.MultiCallRegime`.
Runs never share anything: each has its own random stream, parameters, questions (TAPO's groups never span two runs)
and loss normaliser, so a run's result depends on its seed alone, not on which other seeds run beside it. TAPO runs
once per step over all runs' rows (group scope: identical to one call per run); its statistics are pooled over runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from openrlhf_tapo.algorithms.estimators import CreditInputs, apply_estimators
from openrlhf_tapo.algorithms.gigpo import GiGPOConfig, search_turns
from openrlhf_tapo.algorithms.policy_loss import PolicyLossConfig, get_policy_loss
from openrlhf_tapo.algorithms.tapo import TAPOConfig, ToolCall
from openrlhf_tapo.eval.tapo_counts import stat_counts

# rewards [N] (consecutive groups of n) and n -> one advantage per trajectory [N]
AdvantageFn = Callable[[Tensor, int], Tensor]
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}  # torch defaults


class Environment(Protocol):
    """What the trainer needs from an environment. A batch has `actions`, `mask` [S*B, num_columns], `reward`
    [S*B] and `old_log_probs` [S*B, num_columns]."""

    num_columns: int
    num_draws: int  # uniforms per trajectory
    turn_columns: tuple[tuple[int, int], ...]  # column range of each possible turn, in order (GiGPO's turns)

    def initial_policy(self, runs: int) -> Any: ...  # has .parameters()
    def rollout(self, policy, uniforms: Tensor) -> Any: ...
    def log_probs(self, policy, batch, runs: int) -> Tensor: ...
    def tool_calls(self, batch, group_size: int) -> list[ToolCall]: ...
    def measures(self, policy) -> dict[str, Tensor]: ...  # per-run curves; "accuracy" first


@runtime_checkable
class KnowsCallValue(Protocol):
    """An environment that knows, for each call, whether it brought information the answer needs in its state."""

    def informative(self, batch, calls: Sequence[ToolCall]) -> list[bool]: ...


@dataclass(frozen=True)
class Arm:
    """One training recipe: a policy loss, with TAPO correcting (tapo set) or only measuring (tapo None), and
    GiGPO's step advantage added before TAPO when `gigpo` is set."""

    name: str
    loss: str = "ppo"  # a name of algorithms.policy_loss.POLICY_LOSSES; "ppo" with group_norm is GRPO
    tapo: TAPOConfig | None = None  # None: TAPO runs with beta = 0, which measures the correctable rate only
    optimizer: str = "sgd"  # a key of OPTIMIZERS (torch's default betas, eps and AdamW weight decay 0.01)
    gigpo: GiGPOConfig | None = None  # None: no step advantage

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Arm {self.name!r}: optimizer must be one of {', '.join(OPTIMIZERS)}")

    def tapo_config(self) -> TAPOConfig:
        return self.tapo if self.tapo is not None else replace(TAPOConfig(), beta=0.0)


@dataclass(frozen=True)
class TrainConfig:
    """Size and optimiser of one run; the defaults are the study's (chosen on GRPO alone, before any TAPO run)."""

    steps: int = 150  # RL steps
    group_size: int = 8  # rollouts per question (GRPO group)
    trajectories: int = 32  # rollouts per step and run: trajectories // group_size questions
    lr: float = 0.2  # learning rate on the logit tables (the study's SGD value)
    epochs: int = 2  # loss updates per rollout batch; the second is off-policy, where ppo, sapo and gspo differ
    record_every: int = 5  # curve resolution in steps (the last step is always recorded)

    def __post_init__(self):
        if self.group_size < 2 or self.trajectories % self.group_size:
            raise ValueError(
                f"TrainConfig needs group_size >= 2 dividing trajectories, got {self.group_size} / {self.trajectories}"
            )


def train(
    regime: Environment,
    arm: Arm,
    config: TrainConfig,
    seeds: Sequence[int],
    advantage_fn: AdvantageFn,
    on_step: Callable[[], None] | None = None,
) -> tuple[list[dict], list[dict[str, float]]]:
    """Train one run per seed. Returns one result dict per seed (curves, final metrics) and TAPO's statistics of
    every step, pooled over the runs (counts: failing / correctable trajectories and calls, corrected calls; for an
    environment that knows each call's value also the corrected calls that were uninformative in their state)."""
    runs, per_run, group = len(seeds), config.trajectories, config.group_size
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    policy = regime.initial_policy(runs)
    optimizer = OPTIMIZERS[arm.optimizer](policy.parameters(), lr=config.lr)
    loss_fn, loss_config = get_policy_loss(arm.loss), PolicyLossConfig()
    tapo_config = arm.tapo_config()
    if tapo_config.scope != "group":
        raise ValueError(
            f"arm {arm.name!r}: the simulation runs TAPO with scope='group' (a batch scope would let the "
            f"independent runs witness each other), got scope={tapo_config.scope!r}"
        )
    group_ids = torch.arange(runs * per_run) // group  # one question per group, never shared by two runs

    curves: dict[str, list] = {"step": []}
    tapo_stats: list[dict[str, float]] = []  # per step, pooled over runs
    rewards = torch.zeros(runs, dtype=torch.float64)

    def record(step: int) -> None:
        curves["step"].append(step)
        for name, values in [*regime.measures(policy).items(), ("reward", rewards)]:
            curves.setdefault(name, []).append(values.tolist())

    record(0)
    for step in range(1, config.steps + 1):
        uniforms = torch.stack(
            [torch.rand(per_run, regime.num_draws, generator=g, dtype=torch.float64) for g in generators]
        )
        batch = regime.rollout(policy, uniforms)
        advantages = advantage_fn(batch.reward, group).to(torch.float64)
        token_advantages = advantages.unsqueeze(-1).expand(-1, regime.num_columns) * batch.mask
        rewards = batch.reward.view(runs, per_run).mean(-1)

        calls = regime.tool_calls(batch, group)
        inputs = CreditInputs(
            group_ids=group_ids,
            rewards=batch.reward,
            success=batch.reward >= 1.0,
            calls=calls,
            turns=_turns(regime, batch, calls) if arm.gigpo is not None else (),
        )
        configs = {"tapo": tapo_config} if arm.gigpo is None else {"gigpo": arm.gigpo, "tapo": tapo_config}
        corrected, stats = apply_estimators(token_advantages, batch.mask, inputs, configs)
        if arm.gigpo is not None:  # what TAPO received: the credited calls below are TAPO's alone
            token_advantages, _ = apply_estimators(token_advantages, batch.mask, inputs, {"gigpo": arm.gigpo})
        step_stats = stat_counts(stats["tapo"])
        if arm.gigpo is not None:
            step_stats["gigpo_singleton_share"] = stats["gigpo"]["singleton_share"]
        if isinstance(regime, KnowsCallValue):
            step_stats.update(_credited_by_value(regime.informative(batch, calls), calls, token_advantages, corrected))
        tapo_stats.append(step_stats)
        token_advantages = corrected

        for _ in range(config.epochs):
            log_probs = regime.log_probs(policy, batch, runs)
            token_loss, _ = loss_fn(log_probs, batch.old_log_probs, token_advantages, batch.mask, loss_config)
            mask = batch.mask.to(token_loss.dtype).view(runs, -1)
            per_run_loss = (token_loss.view(runs, -1) * mask).sum(-1) / mask.sum(-1)  # OpenRLHF's token-mean
            optimizer.zero_grad()
            per_run_loss.sum().backward()
            optimizer.step()

        if step % config.record_every == 0 or step == config.steps:
            record(step)
        if on_step is not None:
            on_step()

    return [_result(r, seed, arm, config, curves) for r, seed in enumerate(seeds)], tapo_stats


def _turns(regime: Environment, batch, calls: Sequence[ToolCall]):
    """Every trajectory's turns for GiGPO: the environment's turn column ranges in which it acted, in order, with
    the anchor states of a search agent (`search_turns`: the calls that returned and their observations)."""
    acted = torch.stack([batch.mask[:, start:end].any(-1) for start, end in regime.turn_columns], 1).tolist()
    spans = [[span for span, on in zip(regime.turn_columns, row, strict=True) if on] for row in acted]
    return search_turns(spans, calls)


def _credited_by_value(informative: list[bool], calls, before: Tensor, after: Tensor) -> dict[str, float]:
    """Calls whose turn TAPO changed, split by whether the call was informative in its own trajectory (the
    environment's truth; an uninformative credited call is a spurious match). A trajectory's calls have disjoint
    turn spans, so a changed token names its call."""
    credited = spurious = 0
    for call, useful in zip(calls, informative, strict=True):
        start, end = call.turn_span
        if not torch.equal(before[call.traj, start:end], after[call.traj, start:end]):
            credited += 1
            spurious += not useful
    return {"credited_calls": credited, "credited_uninformative_calls": spurious}


def _result(r: int, seed: int, arm: Arm, config: TrainConfig, curves) -> dict:
    run_curves = {key: [round(v[r], 6) for v in values] for key, values in curves.items() if key != "step"}
    return {
        "arm": arm.name,
        "loss": arm.loss,
        "optimizer": arm.optimizer,
        "gigpo": None if arm.gigpo is None else {"omega": arm.gigpo.omega, "gamma": arm.gigpo.gamma},
        "tapo": None
        if arm.tapo is None
        else {
            "beta": arm.tapo.beta,
            "use_support": arm.tapo.use_support,
            "clip_at_zero": arm.tapo.clip_at_zero,
            "turn_window": arm.tapo.turn_window,
            "obs_check": arm.tapo.obs_check,
        },
        "group_size": config.group_size,
        "seed": seed,
        **{f"final_{key}": values[-1] for key, values in run_curves.items() if key != "reward"},
        "mean_accuracy": sum(run_curves["accuracy"]) / len(run_curves["accuracy"]),
        "steps": list(curves["step"]),
        **{f"{key}_curve": values for key, values in run_curves.items()},
    }
