"""Policy-gradient losses for group RL, chosen by name from `POLICY_LOSSES`.

Every loss has the same signature

    loss_fn(log_probs, old_log_probs, advantages, mask, config) -> (per_token_loss, metrics)

on [batch, response_len] tensors: `log_probs` carries the gradient, `old_log_probs` is the behaviour policy, and
`advantages` may differ from token to token (TAPO corrects the advantage of single tool-call spans). The
per-token loss is NOT aggregated: the caller reduces it with its framework's token-mean or
sequence-mean-token-mean (OpenRLHF: `aggregate_loss`). Masked positions may hold any finite value; the caller's
masked aggregation ignores them. `metrics` holds two 0-d tensors over the valid tokens:

- `clip_fraction`: share of tokens whose hard clip is active (ppo, gspo, gspo_token), or whose soft gate has cut
  the gradient weight below `SAPO_GATE_CLOSED_WEIGHT` (sapo);
- `approx_kl`: mean of log(pi_old / pi), the k1 estimate of KL(pi_old || pi).

Only torch and the standard library are imported here.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PPO_LOG_RATIO_LIMIT = 20.0  # |log r| bound before exp in ppo and sapo (as OpenRLHF, veRL and TRL do)
GSPO_TOKEN_LOG_RATIO_MAX = 10.0  # upper bound on gspo_token's combined log-ratio (as veRL does)
SAPO_GATE_CLOSED_WEIGHT = 0.5  # sapo counts a token as gated when its gradient weight falls below this

# Losses whose ratio is the sequence ratio s_i = exp(mean_t log r_{i,t}). GSPO defines their objective as a
# mean over sequences of token means, and a train/rollout mismatch correction goes into the ratio itself.
SEQUENCE_RATIO_LOSSES = frozenset({"gspo", "gspo_token"})


@dataclass(frozen=True)
class PolicyLossConfig:
    """Hyperparameters of the policy losses. Each loss reads only its own fields.

    clip_eps_low / clip_eps_high: hard clip band [1 - low, 1 + high] of ppo, gspo, gspo_token (the GSPO paper uses
        3e-4 / 4e-4 for its sequence ratio; 0.2 is the PPO/GRPO default).
    dual_clip: lower bound dual_clip * A on the surrogate of negative-advantage tokens (> 1), or None.
    sapo_tau_pos / sapo_tau_neg: documented in their metadata (the launcher's --actor.sapo_tau_* help).
    """

    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: float | None = None
    sapo_tau_pos: float = field(
        default=1.0,
        metadata={
            "help": "temperature of sapo's soft gate for tokens with A > 0 (SAPO paper default; a larger "
            "temperature closes the gate faster)"
        },
    )
    sapo_tau_neg: float = field(
        default=1.05, metadata={"help": "temperature of sapo's soft gate for tokens with A <= 0 (SAPO paper default)"}
    )

    def __post_init__(self):
        if self.clip_eps_low < 0 or self.clip_eps_high < 0:
            raise ValueError(f"clip_eps_low/high must be >= 0, got {self.clip_eps_low} / {self.clip_eps_high}")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1.0 (or None to disable it), got {self.dual_clip}")
        if self.sapo_tau_pos <= 0 or self.sapo_tau_neg <= 0:
            raise ValueError(f"sapo_tau_pos/neg must be > 0, got {self.sapo_tau_pos} / {self.sapo_tau_neg}")


LossOutput = tuple[torch.Tensor, dict[str, torch.Tensor]]
PolicyLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, PolicyLossConfig], LossOutput]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum(dim=dim) / mask.sum(dim=dim)


def _sequence_mean_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_i = mean of log r over the valid tokens of each row, [batch, 1]; an empty row gives 0."""
    return ((log_ratio * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)).unsqueeze(-1)


def _metrics(clipped: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "clip_fraction": _masked_mean(clipped.float(), mask),
        "approx_kl": _masked_mean(-log_ratio.detach(), mask),
    }


def _clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, config: PolicyLossConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """-min(r A, clip(r) A), with the dual-clip floor for A < 0; returns (loss, clip-active mask)."""
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1 - config.clip_eps_low, 1 + config.clip_eps_high) * advantages
    surrogate = torch.min(surr1, surr2)
    if config.dual_clip is not None:
        surrogate = torch.where(advantages < 0, torch.max(surrogate, config.dual_clip * advantages), surrogate)
    return -surrogate, surr2 < surr1


def ppo_loss(log_probs, old_log_probs, advantages, mask, config: PolicyLossConfig) -> LossOutput:
    """PPO/GRPO token clip: -min(r A, clip(r, 1-low, 1+high) A), r = pi / pi_old per token."""
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.clamp(-PPO_LOG_RATIO_LIMIT, PPO_LOG_RATIO_LIMIT).exp()
    loss, clipped = _clipped_surrogate(ratio, advantages, config)
    return loss, _metrics(clipped, log_ratio, mask)


def gspo_loss(log_probs, old_log_probs, advantages, mask, config: PolicyLossConfig) -> LossOutput:
    """GSPO, sequence form (OpenRLHF/TRL): every token uses s_i = exp(mean_t log r), clipped per sequence.

    The gradient flows through the sequence mean: every token of sequence i gets the same weight s_i * mean_t(A_{i,t}),
    so advantages that vary inside a sequence are averaged away. Use gspo_token to keep them.
    """
    log_ratio = log_probs - old_log_probs
    ratio = _sequence_mean_log_ratio(log_ratio, mask).exp() * mask
    loss, clipped = _clipped_surrogate(ratio, advantages, config)
    return loss, _metrics(clipped, log_ratio, mask)


def gspo_token_loss(log_probs, old_log_probs, advantages, mask, config: PolicyLossConfig) -> LossOutput:
    """GSPO-token: ratio sg[s_i] * pi(t) / sg[pi(t)], value s_i, gradient s_i * A_{i,t} * grad log pi(t).

    Same values and clipping as gspo when A is constant in a sequence, but each token keeps its own advantage.
    """
    log_ratio = log_probs.detach() - old_log_probs  # the sequence ratio enters as a constant
    sequence_log_ratio = _sequence_mean_log_ratio(log_ratio, mask)
    # lp - sg(lp) is exactly 0 in value, so the sum is exactly log s_i for every token of the sequence; adding
    # log s_i first and subtracting sg(lp) after would round per token and split the clip decision of one sequence.
    token_log_ratio = (log_probs - log_probs.detach()) + sequence_log_ratio
    ratio = token_log_ratio.clamp(max=GSPO_TOKEN_LOG_RATIO_MAX).exp()
    loss, clipped = _clipped_surrogate(ratio, advantages, config)
    return loss, _metrics(clipped, log_ratio, mask)


def sapo_loss(log_probs, old_log_probs, advantages, mask, config: PolicyLossConfig) -> LossOutput:
    """SAPO soft gate: -f(r) A with f(r) = (4 / tau) * sigmoid(tau (r - 1)), tau = tau_pos if A > 0 else tau_neg.

    At r = 1 the value is -2 A / tau and the gradient is the plain policy gradient A * grad log pi; away from
    r = 1 the gradient weight 4 sigmoid (1 - sigmoid) decays smoothly instead of dropping to 0 at a clip edge.
    """
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.clamp(-PPO_LOG_RATIO_LIMIT, PPO_LOG_RATIO_LIMIT).exp()
    # Built in the ratio's dtype: torch.where on Python floats gives float32, which rounds tau for float64 losses.
    tau_pos, tau_neg = (ratio.new_tensor(t) for t in (config.sapo_tau_pos, config.sapo_tau_neg))
    tau = torch.where(advantages > 0, tau_pos, tau_neg)
    gate = torch.sigmoid(tau * (ratio - 1))
    loss = -(4 / tau) * gate * advantages
    gate_weight = 4 * gate.detach() * (1 - gate.detach())
    return loss, _metrics(gate_weight < SAPO_GATE_CLOSED_WEIGHT, log_ratio, mask)


POLICY_LOSSES: dict[str, PolicyLossFn] = {
    "ppo": ppo_loss,
    "gspo": gspo_loss,
    "gspo_token": gspo_token_loss,
    "sapo": sapo_loss,
}


def get_policy_loss(name: str) -> PolicyLossFn:
    """The loss registered as `name`; a ValueError lists the known names otherwise."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}; choose one of {sorted(POLICY_LOSSES)}") from None
