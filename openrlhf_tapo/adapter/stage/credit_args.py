"""TAPO settings on OpenRLHF's parsed args, and the configurations the TAPO stage refuses.

Our CLI puts the TAPO flags on OpenRLHF's hierarchical args exactly as their dotted names read: `--tapo.beta 0.8`
becomes `args.tapo.beta`, beside `args.actor`, `args.algo`, ... The args object travels to every Ray actor inside the
strategy, so the experience stage reads its configuration from `strategy.args` like OpenRLHF's own code does.
`args.tapo.enable` switches the stage; the other `args.tapo.<field>` are the fields of `TAPOConfig`.

`check_tapo_compatible(args)` holds the rules under which TAPO's correction is not well defined; the CLI runs it
before any Ray work starts and the stage runs it again when it is built (a launcher other than our CLI may have
made the args).
"""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace
from typing import Any

from openrlhf_tapo.algorithms.estimators import ESTIMATORS
from openrlhf_tapo.algorithms.policy_loss import PolicyLossConfig
from openrlhf_tapo.algorithms.tapo import TAPOConfig
from openrlhf_tapo.utils.config_files import ConfigError, check_keys

logger = logging.getLogger(__name__)

TAPO_FIELDS = tuple(f.name for f in dataclasses.fields(TAPOConfig))
# The estimators besides TAPO, each switched by `--<name>.enable` with its config's fields as `--<name>.<field>`.
STEP_ESTIMATORS = tuple(name for name in ESTIMATORS if name != "tapo")
# PolicyLossConfig's fields that are our flags (`--actor.<field>`): the ones documented for the launcher. The others
# come from OpenRLHF's own flags (--actor.eps_clip_low_high, --actor.dual_clip).
LOSS_FLAG_FIELDS = tuple(f.name for f in dataclasses.fields(PolicyLossConfig) if "help" in f.metadata)

# Estimators whose advantage is one group-relative value per trajectory (same on every action token), the quantity
# TAPO compares and corrects. rloo's leave-one-out baseline is dr_grpo's mean baseline scaled by n / (n - 1).
SUPPORTED_ESTIMATORS = ("group_norm", "dr_grpo", "rloo")
_ESTIMATOR_REASONS = {
    "gae": "its advantages come from a critic's per-token values, not from the prompt group",
    "reinforce": "it has no baseline, so every rewarded trajectory has a positive advantage and failure is not "
    "relative to the group",
    "reinforce_baseline": "after the group baseline OpenRLHF whitens the advantages over the whole batch's tokens, "
    "which moves the sign of a trajectory's advantage away from its group outcome",
    "flash_reinforce": "its baseline is the rollout-batch mean with no prompt groups (the n_samples_per_prompt=1 "
    "regime), so there are no groups to find witnesses in",
}


class TAPOConfigError(ValueError):
    """A configuration TAPO cannot run under; the message names the flag and the fix."""


def tapo_config_from_args(args) -> TAPOConfig | None:
    """The TAPOConfig on `args.tapo`, or None when TAPO is off (or the args never had TAPO flags)."""
    tapo = getattr(args, "tapo", None)
    if tapo is None or not getattr(tapo, "enable", False):
        return None
    return TAPOConfig(**{name: getattr(tapo, name) for name in TAPO_FIELDS if hasattr(tapo, name)})


def credit_configs_from_args(args) -> dict[str, Any]:
    """name -> config of every advantage estimator switched on in `args` (`args.<name>.enable`), in the registry's
    order (algorithms/estimators.py): `args.tapo` as `tapo_config_from_args` reads it, `args.gigpo` and
    `args.turn_reward` as the fields of their config dataclasses."""
    configs: dict[str, Any] = {}
    for name, estimator in ESTIMATORS.items():
        if name == "tapo":
            config = tapo_config_from_args(args)
        else:
            section = getattr(args, name, None)
            if section is None or not getattr(section, "enable", False):
                continue
            fields = (f.name for f in dataclasses.fields(estimator.config))
            config = estimator.config(**{f: getattr(section, f) for f in fields if hasattr(section, f)})
        if config is not None:
            configs[name] = config
    return configs


def estimator_namespace(enable: bool, config) -> SimpleNamespace:
    """`args.<name>` as the CLI sets it for an estimator: `enable` plus every field of its config."""
    return SimpleNamespace(enable=enable, **dataclasses.asdict(config))


def check_tapo_compatible(args) -> None:
    """Raise TAPOConfigError when an estimator after the group advantages (TAPO, GiGPO, the turn reward) is on and
    the rest of the configuration makes it wrong.

    Also logs a warning for combinations that run but weaken TAPO (OpenRLHF's gspo, dynamic filtering with
    scope=batch). Does nothing when every one of them is off.
    """
    configs = credit_configs_from_args(args)
    if not configs:
        return
    flags = " and ".join(f"--{name}.enable" for name in configs)
    estimator = args.algo.advantage.estimator
    if estimator not in SUPPORTED_ESTIMATORS:
        reason = _ESTIMATOR_REASONS.get(estimator, "it has not been defined for it")
        raise TAPOConfigError(
            f"{flags} does not work with --algo.advantage.estimator {estimator}: {reason}. "
            f"Use one of {', '.join(SUPPORTED_ESTIMATORS)} (group_norm is GRPO), or drop {flags}."
        )
    n = args.rollout.n_samples_per_prompt
    if n < 2:
        raise TAPOConfigError(
            f"{flags} needs several rollouts per prompt (--rollout.n_samples_per_prompt >= 2, got {n}): "
            "TAPO's witnesses, GiGPO's step groups and the turn reward's baseline are the other trajectories of the "
            "same prompt group."
        )
    if args.algo.kl.init_coef > 0 and not args.algo.kl.use_loss:
        raise TAPOConfigError(
            f"{flags} with --algo.kl.init_coef {args.algo.kl.init_coef} and no --algo.kl.use_loss: OpenRLHF "
            "then adds a per-token KL penalty to the reward, so advantages vary along a trajectory and the "
            "trajectory advantage the stage builds on is not defined. Add --algo.kl.use_loss (GRPO's KL loss) or "
            "set --algo.kl.init_coef 0."
        )
    if not args.train.agent_func_path:
        raise TAPOConfigError(
            f"{flags} acts on the turns and tool calls of an agent, but no agent runs: pass --agent.config "
            "(our multimodal search agent) or --train.agent_func_path."
        )
    if args.actor.policy_loss_type == "gspo":
        logger.warning(
            "%s with --actor.policy_loss_type gspo: OpenRLHF's GSPO takes the gradient through the sequence-mean "
            "ratio, which averages per-turn credit over the whole response. Use gspo_token to keep it.",
            flags,
        )
    config = configs.get("tapo")
    if config is not None and args.algo.dynamic_filtering_enable and config.scope == "batch":
        logger.warning(
            "TAPO scope=batch with --algo.dynamic_filtering_enable: all-correct groups are filtered out before the "
            "stage, so their successful trajectories cannot serve as witnesses for other groups."
        )


def yaml_sections(data: dict, source: str) -> dict[str, Any]:
    """Flatten a `--tapo.config` YAML's mapping (read by utils/config_files.load_yaml_mapping) into
    {dotted flag name: value} for the flags our CLI owns.

    Accepted layout (every key optional)::

        tapo: {enable: true, beta: 0.8, ...}        # TAPOConfig fields + enable
        gigpo: {enable: true, omega: 1.0, ...}      # GiGPOConfig fields + enable (turn_reward: TurnRewardConfig's)
        actor: {policy_loss_type: sapo, sapo_tau_pos: 1.0, sapo_tau_neg: 1.05}
        agent: {config: configs/agent.yaml}

    An unknown section or key is an error naming it (a typo must not silently fall back to a default).
    """
    step_fields = {name: {f.name for f in dataclasses.fields(ESTIMATORS[name].config)} for name in STEP_ESTIMATORS}
    allowed = {
        "tapo": {"enable", *TAPO_FIELDS},
        "actor": {"policy_loss_type", *LOSS_FLAG_FIELDS},
        "agent": {"config"},
        **{name: {"enable", *fields} for name, fields in step_fields.items()},
    }
    check_keys(data, allowed, source)
    flat = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping, got {type(values).__name__}")
        check_keys(values, allowed[section], f"{source}, section {section}")
        flat.update({f"{section}.{key}": value for key, value in values.items()})
    return flat
