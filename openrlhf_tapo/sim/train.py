"""Group RL on the simulation's tabular policy, many independent runs (seeds) at once.

One step, for every run: sample G rollouts of each question -> group advantages (the caller's function: the CLI
passes OpenRLHF's own group_norm) broadcast to every acted token -> TAPO (`tapo_correct`, per run) on the
per-token advantages -> `epochs` plain gradient steps (SGD) on the policy loss (`algorithms.policy_loss`, token-mean
per run). SGD keeps the size of an advantage in the update, which is what TAPO changes (an adaptive optimiser would
rescale it away on a tabular policy).
Runs never share anything: each has its own random stream, parameters, questions (TAPO's groups never span two runs)
and loss normaliser, so a run's result depends on its seed alone, not on which other seeds run beside it. TAPO runs
once per step over all runs' rows (group scope: identical to one call per run); its statistics are pooled over runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from openrlhf_tapo.algorithms.policy_loss import PolicyLossConfig, get_policy_loss
from openrlhf_tapo.algorithms.tapo import TAPOConfig, tapo_correct
from openrlhf_tapo.sim.env import (
    NUM_COLUMNS,
    NUM_DRAWS,
    Policy,
    Regime,
    action_log_probs,
    call_rate,
    expected_accuracy,
    greedy_accuracy,
    rollout,
    tool_calls,
)

# rewards [N] (consecutive groups of n) and n -> one advantage per trajectory [N]
AdvantageFn = Callable[[Tensor, int], Tensor]


@dataclass(frozen=True)
class Arm:
    """One training recipe: a policy loss, with TAPO correcting (tapo set) or only measuring (tapo None)."""

    name: str
    loss: str = "ppo"  # a name of algorithms.policy_loss.POLICY_LOSSES; "ppo" with group_norm is GRPO
    tapo: TAPOConfig | None = None  # None: TAPO runs with beta = 0, which measures the correctable rate only

    def tapo_config(self) -> TAPOConfig:
        return self.tapo if self.tapo is not None else replace(TAPOConfig(), beta=0.0)


@dataclass(frozen=True)
class TrainConfig:
    """Size and optimiser of one run; the defaults are the study's (chosen on GRPO alone, before any TAPO run)."""

    steps: int = 150  # RL steps
    group_size: int = 8  # rollouts per question (GRPO group)
    trajectories: int = 32  # rollouts per step and run: trajectories // group_size questions
    lr: float = 0.2  # SGD learning rate on the logit tables
    epochs: int = 2  # loss updates per rollout batch; the second is off-policy, where ppo, sapo and gspo differ
    record_every: int = 5  # curve resolution in steps (the last step is always recorded)

    def __post_init__(self):
        if self.group_size < 2 or self.trajectories % self.group_size:
            raise ValueError(
                f"TrainConfig needs group_size >= 2 dividing trajectories, got {self.group_size} / {self.trajectories}"
            )


# TAPO statistics of one step: name in the result -> (fraction key, its denominator key) or a count key.
_TAPO_COUNTS = {
    "failing_trajectories": "failing_trajectories",
    "correctable_trajectories": ("failing_traj_correctable_frac", "failing_trajectories"),
    "failing_calls": "failing_calls",
    "correctable_calls": ("failing_calls_correctable_frac", "failing_calls"),
    "corrected_calls": "corrected_calls",
}


def train(
    regime: Regime,
    arm: Arm,
    config: TrainConfig,
    seeds: Sequence[int],
    advantage_fn: AdvantageFn,
    on_step: Callable[[], None] | None = None,
) -> tuple[list[dict], list[dict[str, float]]]:
    """Train one run per seed. Returns one result dict per seed (curves, final metrics) and TAPO's statistics of
    every step, pooled over the runs (counts: failing / correctable trajectories and calls, corrected calls)."""
    runs, per_run, group = len(seeds), config.trajectories, config.group_size
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    policy = Policy.initial(regime, runs)
    optimizer = torch.optim.SGD(policy.parameters(), lr=config.lr)
    loss_fn, loss_config = get_policy_loss(arm.loss), PolicyLossConfig()
    tapo_config = arm.tapo_config()
    if tapo_config.scope != "group":
        raise ValueError(
            f"arm {arm.name!r}: the simulation runs TAPO with scope='group' (a batch scope would let the "
            f"independent runs witness each other), got scope={tapo_config.scope!r}"
        )
    group_ids = torch.arange(runs * per_run) // group  # one question per group, never shared by two runs

    curves: dict[str, list] = {"step": [], "accuracy": [], "greedy_accuracy": [], "call_rate": [], "reward": []}
    tapo_stats: list[dict[str, float]] = []  # per step, pooled over runs
    rewards = torch.zeros(runs, dtype=torch.float64)

    def record(step: int) -> None:
        curves["step"].append(step)
        curves["accuracy"].append(expected_accuracy(policy, regime).tolist())
        curves["greedy_accuracy"].append(greedy_accuracy(policy, regime).tolist())
        curves["call_rate"].append(call_rate(policy).tolist())
        curves["reward"].append(rewards.tolist())

    record(0)
    for step in range(1, config.steps + 1):
        uniforms = torch.stack([torch.rand(per_run, NUM_DRAWS, generator=g, dtype=torch.float64) for g in generators])
        batch = rollout(policy, regime, uniforms)
        advantages = advantage_fn(batch.reward, group).to(torch.float64)
        token_advantages = advantages.unsqueeze(-1).expand(-1, NUM_COLUMNS) * batch.mask
        rewards = batch.reward.view(runs, per_run).mean(-1)

        calls = tool_calls(batch, group)
        token_advantages, stats = tapo_correct(
            token_advantages, batch.mask, group_ids, batch.reward >= 1.0, calls, tapo_config
        )
        tapo_stats.append({name: _count(stats, spec) for name, spec in _TAPO_COUNTS.items()})

        for _ in range(config.epochs):
            log_probs = action_log_probs(policy, batch.actions, batch.mask, batch.qtype, runs)
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


def _count(stats: dict[str, float], spec) -> float:
    if isinstance(spec, str):
        return stats[spec]
    frac, denominator = spec
    return round(stats[frac] * stats[denominator])


def _result(r: int, seed: int, arm: Arm, config: TrainConfig, curves) -> dict:
    run_curves = {key: [round(v[r], 6) for v in values] for key, values in curves.items() if key != "step"}
    return {
        "arm": arm.name,
        "loss": arm.loss,
        "tapo": None
        if arm.tapo is None
        else {"beta": arm.tapo.beta, "use_support": arm.tapo.use_support, "clip_at_zero": arm.tapo.clip_at_zero},
        "group_size": config.group_size,
        "seed": seed,
        "final_accuracy": run_curves["accuracy"][-1],
        "final_greedy_accuracy": run_curves["greedy_accuracy"][-1],
        "final_call_rate": run_curves["call_rate"][-1],
        "mean_accuracy": sum(run_curves["accuracy"]) / len(run_curves["accuracy"]),
        "steps": list(curves["step"]),
        **{f"{key}_curve": values for key, values in run_curves.items()},
    }
