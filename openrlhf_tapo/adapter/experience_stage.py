"""The TAPO stage inside OpenRLHF 0.11.2's experience maker.

`TAPOExperienceMaker` is OpenRLHF's `RemoteExperienceMaker` with one step added: after OpenRLHF's own
`compute_advantages_and_returns` has computed the group advantages of the whole rollout batch (it sees every
micro-batch of the step at once), `apply_tapo` recovers each trajectory's tool calls from its tokens
(`adapter/trajectory.py`), runs `tapo_correct` on the batch, writes the corrected per-token advantages back into the
experiences, and adds TAPO's diagnostics to each experience's `info`. Everything else (rewards, length penalties,
group statistics, returns, logging, the PPO update) stays OpenRLHF's. With `args.tapo.enable` off it is exactly
OpenRLHF's class.

Inputs TAPO needs, and where they come from:
- groups: `experience.index` holds each sample's position in rollout order and a prompt's n samples are consecutive,
  so group = index // n_samples_per_prompt (how OpenRLHF's own group baselines reshape the rewards);
- success: `experience.scores` (the agent's correctness score) >= `tapo.success_threshold`; an experience without
  scores falls back to its raw reward, with a warning;
- advantages / action mask: the (B, A) tensors OpenRLHF just computed, padded to one width across micro-batches;
- tool calls: rebuilt from the tokens (adapter/trajectory.py) with the tools of the run's agent YAML
  (`args.agent.config`, else `$OPENRLHF_TAPO_AGENT_CONFIG`), so custom tools and raised limits count as in the
  rollout; calls whose execution failed are flagged and logged as `tapo/failed_calls`.
`returns` are left as OpenRLHF computed them (no critic reads them with the supported estimators).

Diagnostics go into `info` as per-sample float tensors (OpenRLHF's actor averages `info` over samples when it logs, and
splits it per sample when it rebalances batches): every batch statistic of `tapo_correct` under `tapo/<name>` (the
same value on every sample, so its logged mean is the batch value), plus per-trajectory `tapo/tool_calls`,
`tapo/invalid_tool_calls`, `tapo/turns`, `tapo/success` and `tapo/advantage_delta` (mean change over the
trajectory's action tokens).

Asynchronous training (`--train.async_enable`) builds its experiences in the training actor through the same class,
so the stage is the same there. With `--algo.dynamic_filtering_enable`, groups whose mean score is outside the
range never reach the stage (all-correct and all-wrong groups have no failing or no successful trajectory anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

from openrlhf_tapo.adapter.config import check_tapo_compatible, tapo_config_from_args
from openrlhf_tapo.adapter.trajectory import RecoveredCalls, ToolCallRecovery
from openrlhf_tapo.agent.config import AgentConfig, load_agent_config
from openrlhf_tapo.algorithms.tapo import TAPOConfig, tapo_correct

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


def apply_tapo(
    experiences: Sequence[Experience],
    success: Sequence[bool],
    n_samples_per_prompt: int,
    recovery: ToolCallRecovery,
    config: TAPOConfig,
) -> dict[str, float]:
    """Correct `experience.advantages` in place with TAPO over the whole batch; returns the batch statistics.

    `success` has one flag per sample in experience/row order. Adds the `tapo/*` diagnostics to each `info`.
    """
    sizes = [exp.advantages.shape[0] for exp in experiences]
    if any(exp.index is None or len(exp.index) != size for exp, size in zip(experiences, sizes, strict=True)):
        raise ValueError("TAPO needs experience.index (set by RemoteExperienceMaker.split_rollout_samples) per sample")
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

    corrected, stats = tapo_correct(advantages, action_mask, group_ids, list(success), recovered.calls, config)

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
        for name, value in stats.items():
            exp.info[INFO_PREFIX + name] = torch.full((size,), float(value))
        for name, values in per_sample.items():
            exp.info[INFO_PREFIX + name] = values[row : row + size].clone()
        row += size
    return stats


class TAPOExperienceMaker(RemoteExperienceMaker):
    """OpenRLHF's experience maker with the TAPO stage after its advantage computation (see the module doc)."""

    def __init__(self, *args, agent_config: AgentConfig | None = None, **kwargs):
        """OpenRLHF's arguments; `agent_config` is the run's agent configuration when the caller holds it (the
        in-process driver). Otherwise it is the YAML of `--agent.config` (`args.agent.config`), else the file
        $OPENRLHF_TAPO_AGENT_CONFIG names (the launcher exports it to every worker), else the defaults: calls are
        canonicalised with the tools and limits the rollout ran with."""
        super().__init__(*args, **kwargs)
        self.tapo_config = tapo_config_from_args(self.args)
        if self.tapo_config is not None:
            check_tapo_compatible(self.args)
            self.tapo_config.validate()
            if agent_config is None:
                agent_config = load_agent_config(getattr(getattr(self.args, "agent", None), "config", None))
            self.tool_call_recovery = ToolCallRecovery(self.tokenizer, agent_config.tools)

    @torch.no_grad()
    def compute_advantages_and_returns(self, experiences: list[Experience]) -> list[Experience]:
        if self.tapo_config is None:
            return super().compute_advantages_and_returns(experiences)
        # Read before OpenRLHF shapes the rewards (length penalties) for experiences that carry no scores.
        success = success_flags(experiences, self.tapo_config.success_threshold)
        experiences = super().compute_advantages_and_returns(experiences)
        stats = apply_tapo(
            experiences,
            success,
            self.args.rollout.n_samples_per_prompt,
            self.tool_call_recovery,
            self.tapo_config,
        )
        logger.info(
            "TAPO: %d calls, %.0f%% of failing trajectories correctable, %d calls corrected",
            int(stats.get("num_calls", 0)),
            100 * stats.get("failing_traj_correctable_frac", 0.0),
            int(stats.get("corrected_calls", 0)),
        )
        return experiences
