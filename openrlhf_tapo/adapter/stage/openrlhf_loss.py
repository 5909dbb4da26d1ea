"""OpenRLHF 0.11.2 `PolicyLoss` with the gspo_token and sapo losses beside ppo and gspo.

Drop-in for `openrlhf.models.loss.PolicyLoss`: the same constructor arguments (plus `sapo_tau_pos`,
`sapo_tau_neg`), the same `forward` arguments and the same 5-tuple (loss, clip_ratio, ppo_kl, vllm_kl,
is_filter_ratio), so `ActorPPOTrainer.training_step`, its logging, the train/rollout importance-sampling
correction and `aggregate_loss` work unchanged for every type. The per-token losses come from
`openrlhf_tapo.algorithms.policy_loss`; for ppo and gspo they reproduce OpenRLHF's numbers.

OpenRLHF's `ActorPPOTrainer.__init__` (openrlhf/trainer/ray/ppo_actor.py) builds its loss from the module
global `PolicyLoss`; `build_policy_loss(args)` builds ours from the same parsed args.
"""

import logging

import torch
from openrlhf.models.loss import PolicyLoss as OpenRLHFPolicyLoss
from openrlhf.models.loss import aggregate_loss
from openrlhf.models.utils import masked_mean

from openrlhf_tapo.adapter.stage.credit_args import LOSS_FLAG_FIELDS
from openrlhf_tapo.algorithms.policy_loss import SEQUENCE_RATIO_LOSSES, PolicyLossConfig, get_policy_loss

logger = logging.getLogger(__name__)

OPENRLHF_DEFAULT_CLIP = 0.2
GSPO_PAPER_CLIP = (3e-4, 4e-4)

_logged_once: set[str] = set()


def _log_once(key: str, level: int, message: str) -> None:
    if key not in _logged_once:
        _logged_once.add(key)
        logger.log(level, message)


class PolicyLoss(OpenRLHFPolicyLoss):
    """OpenRLHF's PolicyLoss extended to policy_loss_type in {ppo, gspo, gspo_token, sapo}.

    - ppo, sapo: per-token ratio; the train/rollout IS correction (is_correction_level != "off") weights or masks
      the per-token loss and reports vllm_kl / is_filter_ratio: OpenRLHF's own code for ppo, called (see __init__).
    - gspo, gspo_token: sequence ratio, aggregated as seq-mean-token-mean whatever token_level_loss says (as
      OpenRLHF forces for gspo); with the IS correction on, the ratio is taken against the rollout log-probs and
      vllm_kl / is_filter_ratio are None (OpenRLHF's gspo behaviour).
    - clip_ratio is the hard-clip fraction, or sapo's gate fraction (tokens whose gradient weight fell below 0.5).
    """

    def __init__(
        self,
        clip_eps_low: float = 0.2,
        clip_eps_high: float = 0.2,
        dual_clip: float = None,
        token_level_loss: bool = True,
        policy_loss_type: str = "ppo",
        is_correction_level: str = "off",
        is_correction_mode: str = "mask",
        is_correction_gating: str = "ratio",
        is_correction_threshold: list = (0.5, 5.0),
        sapo_tau_pos: float = 1.0,
        sapo_tau_neg: float = 1.05,
    ) -> None:
        loss_fn = get_policy_loss(policy_loss_type)
        if policy_loss_type == "sapo" and dual_clip is not None:
            raise ValueError(
                "dual_clip has no effect on sapo (its soft gate has no clip edge); unset --actor.dual_clip"
            )
        super().__init__(
            clip_eps_low=clip_eps_low,
            clip_eps_high=clip_eps_high,
            dual_clip=dual_clip,
            token_level_loss=token_level_loss,
            policy_loss_type=policy_loss_type,
            is_correction_level=is_correction_level,
            is_correction_mode=is_correction_mode,
            is_correction_gating=is_correction_gating,
            is_correction_threshold=is_correction_threshold,
        )
        self.loss_fn = loss_fn
        self.config = PolicyLossConfig(
            clip_eps_low=clip_eps_low,
            clip_eps_high=clip_eps_high,
            dual_clip=dual_clip,
            sapo_tau_pos=sapo_tau_pos,
            sapo_tau_neg=sapo_tau_neg,
        )
        self.sequence_ratio = policy_loss_type in SEQUENCE_RATIO_LOSSES
        if self.sequence_ratio:
            if token_level_loss:
                _log_once(
                    "gspo_aggregation",
                    logging.INFO,
                    f"policy_loss_type={policy_loss_type} aggregates as seq-mean-token-mean (the GSPO objective); "
                    "--actor.loss_agg_mode token-mean does not apply to it",
                )
            self.token_level_loss = False
            if clip_eps_low == clip_eps_high == OPENRLHF_DEFAULT_CLIP:
                _log_once(
                    "gspo_clip",
                    logging.WARNING,
                    f"policy_loss_type={policy_loss_type} with OpenRLHF's PPO clip range 0.2: the sequence ratio "
                    f"stays close to 1, so this clip almost never binds. The GSPO paper uses "
                    f"--actor.eps_clip_low_high {GSPO_PAPER_CLIP[0]} {GSPO_PAPER_CLIP[1]}.",
                )
        # OpenRLHF 0.11.2 applies the train/rollout IS correction inline in its forward, for ppo only. Per-token losses
        # (ppo, sapo) get it by CALLING that forward, not by a copy: OpenRLHF's ppo at ratio 1 (log_probs =
        # old_log_probs) with advantages = -loss returns exactly `loss` per token (-min(-loss, -loss)), which its code
        # then weights or masks by the correction and aggregates. Gradients pass through the advantages unchanged.
        self._openrlhf_is_correction = None
        if is_correction_level != "off" and not self.sequence_ratio:
            self._openrlhf_is_correction = OpenRLHFPolicyLoss(
                token_level_loss=self.token_level_loss,
                policy_loss_type="ppo",
                is_correction_level=is_correction_level,
                is_correction_mode=is_correction_mode,
                is_correction_gating=is_correction_gating,
                is_correction_threshold=is_correction_threshold,
            )

    def forward(
        self,
        log_probs: torch.Tensor,
        old_log_probs: torch.Tensor,
        advantages: torch.Tensor,
        action_mask: torch.Tensor | None = None,
        rollout_log_probs: torch.Tensor | None = None,
        dp_size: int = 1,
        batch_num_tokens: float | None = None,
        global_batch_size: float | None = None,
    ):
        if action_mask is None:
            action_mask = torch.ones_like(log_probs)
        correcting = self.is_correction_level != "off"
        if correcting and rollout_log_probs is None:
            raise ValueError(
                f"is_correction_level={self.is_correction_level} needs rollout_log_probs (vLLM's log-probs of the "
                "sampled tokens); the experience has none"
            )
        behaviour_log_probs = rollout_log_probs if correcting and self.sequence_ratio else old_log_probs
        loss, metrics = self.loss_fn(log_probs, behaviour_log_probs, advantages, action_mask, self.config)

        aggregation = dict(dp_size=dp_size, batch_num_tokens=batch_num_tokens, global_batch_size=global_batch_size)
        if self._openrlhf_is_correction is not None:  # OpenRLHF's correction and aggregation of a per-token loss
            old = old_log_probs.detach()
            loss, _, _, vllm_kl, is_filter_ratio = self._openrlhf_is_correction(
                old, old, -loss, action_mask, rollout_log_probs, **aggregation
            )
        else:
            vllm_kl = is_filter_ratio = None
            loss = aggregate_loss(loss, action_mask, token_level_loss=self.token_level_loss, **aggregation)
        if behaviour_log_probs is old_log_probs:
            ppo_kl = metrics["approx_kl"]
        else:
            ppo_kl = masked_mean((old_log_probs - log_probs).detach(), action_mask, dim=None)
        return loss, metrics["clip_fraction"], ppo_kl, vllm_kl, is_filter_ratio


def build_policy_loss(args) -> PolicyLoss:
    """Our PolicyLoss from OpenRLHF's parsed (hierarchical) args, with the kwargs `ActorPPOTrainer.__init__` passes.

    `args.actor.sapo_tau_pos` / `sapo_tau_neg` are read when our CLI defined them; the class defaults otherwise.
    """
    actor, advantage = args.actor, args.algo.advantage
    sapo = {name: getattr(actor, name) for name in LOSS_FLAG_FIELDS if hasattr(actor, name)}
    return PolicyLoss(
        clip_eps_low=actor.eps_clip_low_high[0],
        clip_eps_high=actor.eps_clip_low_high[1],
        dual_clip=actor.dual_clip,
        token_level_loss=actor.loss_agg_mode == "token-mean",
        policy_loss_type=actor.policy_loss_type,
        is_correction_level=advantage.is_correction_level,
        is_correction_mode=advantage.is_correction_mode,
        is_correction_gating=advantage.is_correction_gating,
        is_correction_threshold=advantage.is_correction_threshold,
        **sapo,
    )
