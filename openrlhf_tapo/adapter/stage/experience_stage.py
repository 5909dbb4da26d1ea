"""The stage of the advantage estimators (TAPO, GiGPO, the turn reward) inside OpenRLHF 0.11.2's experience maker.

`TAPOExperienceMaker` is OpenRLHF's `RemoteExperienceMaker` with one step added: after OpenRLHF's own
`compute_advantages_and_returns` has computed the group advantages of the whole rollout batch (it sees every
micro-batch of the step at once), `apply_credit` recovers each trajectory's turns and tool calls from its tokens
(`adapter/stage/trajectory.py`), runs the estimators switched on (`--tapo.enable`, `--gigpo.enable`,
`--turn_reward.enable`) through the registry of `algorithms/estimators.py`, in its order, writes the new per-token
advantages back into the experiences, and adds the estimators' diagnostics to each experience's `info`. Everything
else (rewards, length penalties, group statistics, returns, logging, the PPO update) stays OpenRLHF's. With every
estimator off it is exactly OpenRLHF's class.

Inputs the estimators need, and where they come from:
- groups: `experience.index` holds each sample's position in rollout order and a prompt's n samples are consecutive,
  so group = index // n_samples_per_prompt (how OpenRLHF's own group baselines reshape the rewards);
- success (TAPO): `experience.scores` (the agent's correctness score) >= `tapo.success_threshold`; an experience
  without scores falls back to its raw reward, with a warning;
- outcome rewards (GiGPO's step returns): `experience.rewards` before OpenRLHF shapes them, the values its group
  advantages are computed from;
- advantages / action mask: the (B, A) tensors OpenRLHF just computed, padded to one width across micro-batches;
- turns and tool calls: rebuilt from the tokens (adapter/stage/trajectory.py) with the tools of the run's agent YAML
  (`args.agent.config`, else `$OPENRLHF_TAPO_AGENT_CONFIG`), so custom tools and raised limits count as in the
  rollout; calls whose execution failed are flagged and logged as `tapo/failed_calls`. GiGPO's anchor states come
  from the calls (`algorithms.gigpo.search_turns`);
- first hits (turn reward): the first call whose observation contains the answer of `experience.labels`.
`returns` are left as OpenRLHF computed them (no critic reads them with the supported estimators).

Diagnostics go into `info` as per-sample float tensors (OpenRLHF's actor averages `info` over samples when it logs, and
splits it per sample when it rebalances batches): every batch statistic of each estimator under `<name>/<stat>`
(`tapo/corrected_calls`, `gigpo/singleton_share`, `turn_reward/hit_rate`, ...; the same value on every sample, so its
logged mean is the batch value), plus per-trajectory `tapo/tool_calls`, `tapo/invalid_tool_calls`, `tapo/turns`,
`tapo/success` and `tapo/advantage_delta` (mean change over the trajectory's action tokens, all estimators together).

Asynchronous training (`--train.async_enable`) builds its experiences in the training actor through the same class,
so the stage is the same there. With `--algo.dynamic_filtering_enable`, groups whose mean score is outside the
range never reach the stage (all-correct and all-wrong groups have no failing or no successful trajectory anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

from openrlhf_tapo.adapter.stage.credit_args import check_tapo_compatible, credit_configs_from_args
from openrlhf_tapo.adapter.stage.trajectory import RecoveredCalls, ToolCallRecovery
from openrlhf_tapo.agent.config import AgentConfig, load_agent_config
from openrlhf_tapo.agent.failures import hit_turn
from openrlhf_tapo.agent.reward import parse_label
from openrlhf_tapo.algorithms.estimators import CreditInputs, apply_estimators
from openrlhf_tapo.algorithms.gigpo import search_turns
from openrlhf_tapo.algorithms.tapo import TAPOConfig, ToolCall

logger = logging.getLogger(__name__)

INFO_PREFIX = "tapo/"
_warned_no_scores = False


def success_flags(experiences: Sequence[Experience], threshold: float) -> list[bool]:
    """Per sample, in experience/row order: score (or raw reward when the agent gave no score) >= threshold."""
    global _warned_no_scores
    flags = []
    for exp in experiences:
        values = exp.scores if exp.scores is not None else exp.rewards
        if exp.scores is None and not _warned_no_scores:
            _warned_no_scores = True
            logger.warning("TAPO: the agent returns no scores; success is read from the reward instead")
        flags.extend(bool(v >= threshold) for v in values.flatten().tolist())
    return flags


def first_hits(labels: Sequence, calls: Sequence[ToolCall]) -> list[int | None]:
    """Per trajectory, the turn of its first call whose observation contains the label's answer (the agent's answer
    rule, `agent.failures.hit_turn`), or None. A label that cannot be read counts no
    hit for its trajectory and is logged once."""
    golds = []
    for label in labels:
        try:
            golds.append(parse_label(label).golds())
        except ValueError as err:
            logger.warning("turn reward: a label could not be read (%s); its trajectory counts no hit", err)
            golds.append([])
    by_traj: list[list[ToolCall]] = [[] for _ in labels]
    for call in calls:
        by_traj[call.traj].append(call)
    return [hit_turn(made, answers) for made, answers in zip(by_traj, golds, strict=True)]


def apply_credit(
    experiences: Sequence[Experience],
    success: Sequence[bool],
    rewards: Sequence[float],
    n_samples_per_prompt: int,
    recovery: ToolCallRecovery,
    configs: Mapping[str, Any],
) -> dict[str, dict[str, float]]:
    """Run the estimators in `configs` (name -> config, algorithms/estimators.py) on the whole batch and write the
    new advantages into the experiences in place; returns each estimator's batch statistics.

    `success` and `rewards` have one value per sample in experience/row order (the rewards OpenRLHF's group
    advantages were computed from). Adds each estimator's statistics to every `info` under `<name>/`, and the
    per-trajectory `tapo/*` diagnostics.
    """
    sizes = [exp.advantages.shape[0] for exp in experiences]
    if any(exp.index is None or len(exp.index) != size for exp, size in zip(experiences, sizes, strict=True)):
        raise ValueError("the stage needs experience.index (set by RemoteExperienceMaker.split_rollout_samples)")
    batch, width = sum(sizes), max(exp.advantages.shape[1] for exp in experiences)
    advantages = torch.zeros(batch, width, dtype=torch.float32)
    action_mask = torch.zeros(batch, width, dtype=torch.bool)
    recovered = RecoveredCalls()
    row = 0
    for exp, size in zip(experiences, sizes, strict=True):
        cols = exp.advantages.shape[1]
        advantages[row : row + size, :cols] = exp.advantages.float()
        action_mask[row : row + size, :cols] = exp.action_mask.bool()
        recovery.recover(exp.sequences, exp.action_mask, exp.attention_mask, first_traj=row, out=recovered)
        row += size
    group_ids = [i // n_samples_per_prompt for exp in experiences for i in exp.index]
    needs_turns = any(name != "tapo" for name in configs)
    inputs = CreditInputs(
        group_ids=group_ids,
        rewards=list(rewards),
        success=list(success),
        calls=recovered.calls,
        turns=search_turns(recovered.spans, recovered.calls) if needs_turns else (),
        first_hit=first_hits([lb for exp in experiences for lb in exp.labels], recovered.calls)
        if "turn_reward" in configs
        else None,
    )

    corrected, stats = apply_estimators(advantages, action_mask, inputs, configs)

    mask = action_mask.float()
    delta = ((corrected - advantages) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    per_sample = {
        "tool_calls": torch.tensor(recovered.valid_calls, dtype=torch.float32),
        "invalid_tool_calls": torch.tensor(recovered.invalid_calls, dtype=torch.float32),
        "turns": torch.tensor(recovered.turns, dtype=torch.float32),
        "success": torch.tensor(list(success), dtype=torch.float32),
        "advantage_delta": delta,
    }
    row = 0
    for exp, size in zip(experiences, sizes, strict=True):
        cols = exp.advantages.shape[1]
        exp.advantages = corrected[row : row + size, :cols].to(exp.advantages.dtype)
        for name, values in stats.items():
            for key, value in values.items():
                exp.info[f"{name}/{key}"] = torch.full((size,), float(value))
        for name, values in per_sample.items():
            exp.info[INFO_PREFIX + name] = values[row : row + size].clone()
        row += size
    return stats


class TAPOExperienceMaker(RemoteExperienceMaker):
    """OpenRLHF's experience maker with the stage of the estimators after its advantage computation (TAPO, GiGPO,
    the turn reward; see the module doc)."""

    def __init__(self, *args, agent_config: AgentConfig | None = None, **kwargs):
        """OpenRLHF's arguments; `agent_config` is the run's agent configuration when the caller holds it (the
        in-process driver). Otherwise it is the YAML of `--agent.config` (`args.agent.config`), else the file
        $OPENRLHF_TAPO_AGENT_CONFIG names (the launcher exports it to every worker), else the defaults: calls are
        canonicalised with the tools and limits the rollout ran with."""
        super().__init__(*args, **kwargs)
        self.credit_configs = credit_configs_from_args(self.args)
        if self.credit_configs:
            check_tapo_compatible(self.args)
            for config in self.credit_configs.values():
                if hasattr(config, "validate"):
                    config.validate()
            if agent_config is None:
                agent_config = load_agent_config(getattr(getattr(self.args, "agent", None), "config", None))
            self.tool_call_recovery = ToolCallRecovery(self.tokenizer, agent_config.tools)

    @torch.no_grad()
    def compute_advantages_and_returns(self, experiences: list[Experience]) -> list[Experience]:
        if not self.credit_configs:
            return super().compute_advantages_and_returns(experiences)
        # Read before OpenRLHF shapes the rewards (length penalties): success for TAPO (from scores when the agent
        # gives them) and the outcome rewards GiGPO's step returns are made of.
        tapo = self.credit_configs.get("tapo")
        success = success_flags(experiences, tapo.success_threshold if tapo else TAPOConfig().success_threshold)
        rewards = [r for exp in experiences for r in exp.rewards.flatten().tolist()]
        experiences = super().compute_advantages_and_returns(experiences)
        stats = apply_credit(
            experiences,
            success,
            rewards,
            self.args.rollout.n_samples_per_prompt,
            self.tool_call_recovery,
            self.credit_configs,
        )
        if "tapo" in stats:
            tapo_stats = stats["tapo"]
            logger.info(
                "TAPO: %d calls, %.0f%% of failing trajectories correctable, %d calls corrected",
                int(tapo_stats.get("num_calls", 0)),
                100 * tapo_stats.get("failing_traj_correctable_frac", 0.0),
                int(tapo_stats.get("corrected_calls", 0)),
            )
        return experiences
