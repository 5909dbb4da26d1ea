"""`python -m openrlhf_tapo.cli.train_ppo_ray`: OpenRLHF 0.11.2's Ray PPO launcher with TAPO, our losses and our agent.

Every OpenRLHF flag is accepted unchanged and parsed + validated by OpenRLHF's own parser
(`adapter/stage/openrlhf_args.py`); training is OpenRLHF's own `train(args)`. Ours sit beside them in the
same dotted style:

    --tapo.enable / --tapo.disable        TAPO stage on/off (default off)
    --tapo.beta/theta/alpha_min/...       TAPOConfig fields (algorithms/tapo.py documents each default)
    --tapo.no_support, --tapo.no_clip     ablations (and --tapo.use_support, --tapo.clip_at_zero)
    --tapo.similarity TOOL=NAME ...       per-tool similarity (merged over the defaults)
    --gigpo.enable, --gigpo.<field>       GiGPO's step-level advantage (GiGPOConfig, algorithms/gigpo.py)
    --turn_reward.enable, --turn_reward.<field>   the turn-reward baseline (algorithms/turn_reward.py)
    --tapo.config FILE.yaml               defaults for the flags above (configs/tapo.yaml); command-line flags win
    --agent.config FILE.yaml              the search agent's YAML; exported to every Ray worker as
                                          $OPENRLHF_TAPO_AGENT_CONFIG and, unless --train.agent_func_path is given,
                                          selects our executor (openrlhf_tapo/agent/executor.py)
    --actor.policy_loss_type              ppo | gspo (OpenRLHF's) | gspo_token | sapo
    --actor.sapo_tau_pos/--actor.sapo_tau_neg   SAPO gate temperatures (sapo only)
    --dry-run                             run every check, print the resolved configuration (JSON) and exit

All flags are checked before any Ray work starts, and so are the inputs (adapter/checks/preflight.py: prompt data, the
agent's tools, model, save paths); a bad one ends the program with a message naming it and the fix (exit 2).
Our --tapo.* / --agent.* flags need --tapo.enable (or --tapo.disable, to run them without TAPO on purpose); --agent.*
flags may also come with --gigpo.enable or --turn_reward.enable, and each estimator's own flags need its enable.
The estimators compose in the order algorithms/estimators.py defines (GiGPO, turn reward, then TAPO).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from openrlhf_tapo.adapter.run_spec import EXECUTOR_PATH
from openrlhf_tapo.adapter.stage.credit_args import (
    LOSS_FLAG_FIELDS,
    STEP_ESTIMATORS,
    TAPO_FIELDS,
    TAPOConfigError,
    check_tapo_compatible,
    estimator_namespace,
    yaml_sections,
)
from openrlhf_tapo.adapter.stage.openrlhf_args import OPENRLHF_LOSS_TYPE
from openrlhf_tapo.algorithms.estimators import ESTIMATORS
from openrlhf_tapo.algorithms.policy_loss import POLICY_LOSSES, PolicyLossConfig
from openrlhf_tapo.algorithms.tapo import TAPOConfig
from openrlhf_tapo.utils.config_files import ConfigError, load_yaml_mapping

PROG = "python -m openrlhf_tapo.cli.train_ppo_ray"
OUR_NAMESPACES = ("--tapo.", "--agent.", *(f"--{name}." for name in STEP_ESTIMATORS))
STEP_HELP = {
    "gigpo": "add GiGPO's step-level advantage (turns of a prompt group that act from the same tool observations) "
    "to the group advantages",
    "turn_reward": "add the turn-reward baseline (did a tool observation hold the label's answer) to the group "
    "advantages, on the turns up to the first one that did",
}


class LaunchError(Exception):
    """A flag our launcher rejects; the message names it."""


def _turn_window(value: str) -> int | None:
    if value.lower() in ("off", "none"):
        return None
    return int(value)


def _optional_float(value: str) -> float | None:
    if value.lower() in ("off", "none"):
        return None
    return float(value)


def _similarity(value: str) -> tuple[str, str]:
    tool, sep, name = value.partition("=")
    if not sep or not tool or not name:
        raise argparse.ArgumentTypeError(f"expected TOOL=SIMILARITY (e.g. text_search=text_exact), got {value!r}")
    return tool, name


def _field_help(config_class, name: str) -> str:
    """The documentation of a config dataclass field (its `help` metadata) and its default: one source for both."""
    spec = next(f for f in dataclasses.fields(config_class) if f.name == name)
    default = getattr(config_class(), name)
    return f"{spec.metadata['help']} (default: {'off' if default is None else default})"


# How a field's type becomes a flag: its source text (`from __future__ import annotations`) or a class's name.
FLAG_KINDS = {
    "float": {"type": float},
    "str": {},
    "int | None": {"type": _turn_window, "metavar": "K|off"},
    "float | None": {"type": _optional_float, "metavar": "X|off"},
    "dict[str, str]": {"type": _similarity, "nargs": "+", "metavar": "TOOL=NAME"},
}


def _add_field_flag(group, section: str, config_class, spec: dataclasses.Field) -> None:
    """`--<section>.<field>` generated from a config dataclass field: its type, `choices` and help (metadata), and its
    default in the help. A bool field is a switch on, plus its off switch named in the metadata (`off`)."""
    flag, help_text = f"--{section}.{spec.name}", _field_help(config_class, spec.name)
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", str(spec.type))
    if kind == "bool":
        group.add_argument(flag, action="store_true", help=help_text)
        off = f"--{section}.{spec.metadata['off']}"
        group.add_argument(off, dest=f"{section}.{spec.name}", action="store_false", help=f"{spec.name} = False")
        return
    if kind not in FLAG_KINDS:
        raise TypeError(f"{config_class.__name__}.{spec.name}: no flag kind for type {kind!r}; add it to FLAG_KINDS")
    choices = {"choices": spec.metadata["choices"]} if "choices" in spec.metadata else {}
    group.add_argument(flag, help=help_text, **FLAG_KINDS[kind], **choices)


def build_parser() -> argparse.ArgumentParser:
    """Our flags only (OpenRLHF's are parsed by OpenRLHF). Defaults are suppressed: absent flags stay absent.

    Every --tapo.<field> / --actor.sapo_tau_* is generated from its field in TAPOConfig / PolicyLossConfig, where its
    default and help are defined."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
        description="OpenRLHF's PPO launcher with TAPO. Every `python -m openrlhf.cli.train_ppo_ray` flag is accepted "
        "as is (see its -h); the flags below are ours. Before anything starts (also with --dry-run) the launcher "
        "checks the prompt data, the agent's tools, the model path and the save path.",
    )

    tapo = parser.add_argument_group(
        "TAPO (every --tapo.* flag but --tapo.disable needs --tapo.enable; fields of TAPOConfig, algorithms/tapo.py)"
    )
    tapo.add_argument("--tapo.enable", action="store_true", help="run the TAPO stage after the group advantages")
    tapo.add_argument(
        "--tapo.disable",
        dest="tapo.enable",
        action="store_false",
        help="TAPO off on purpose: turns off a YAML's enable, and allows --agent.config / other --tapo.* flags "
        "without TAPO (default: off)",
    )
    tapo.add_argument("--tapo.config", metavar="YAML", help="defaults for our flags (configs/tapo.yaml); flags win")
    for spec in dataclasses.fields(TAPOConfig):
        _add_field_flag(tapo, "tapo", TAPOConfig, spec)
    for name in STEP_ESTIMATORS:
        config_class = ESTIMATORS[name].config
        group = parser.add_argument_group(
            f"{name} (every --{name}.* flag needs --{name}.enable; fields of {config_class.__name__}, "
            f"{config_class.__module__.replace('openrlhf_tapo.', '').replace('.', '/')}.py)"
        )
        group.add_argument(f"--{name}.enable", action="store_true", help=STEP_HELP[name])
        for spec in dataclasses.fields(config_class):
            _add_field_flag(group, name, config_class, spec)
    loss = parser.add_argument_group("policy loss (OpenRLHF's flag, with our types)")
    loss.add_argument(
        "--actor.policy_loss_type",
        choices=sorted(POLICY_LOSSES),
        help="ppo / gspo: OpenRLHF's; gspo_token: GSPO's sequence ratio with per-token advantages (keeps TAPO's "
        "per-turn credit); sapo: soft-gated token loss (docs/losses.md) (default: ppo)",
    )
    for spec in dataclasses.fields(PolicyLossConfig):
        if spec.name in LOSS_FLAG_FIELDS:
            _add_field_flag(loss, "actor", PolicyLossConfig, spec)
    agent = parser.add_argument_group("agent")
    agent.add_argument(
        "--agent.config",
        metavar="YAML",
        help="the search agent's YAML (configs/agent.yaml); selects our executor unless --train.agent_func_path "
        "is given, and is exported to every Ray worker (default: none)",
    )
    parser.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="run every check, print the resolved configuration as JSON on stdout (logs go to stderr) and exit",
    )
    return parser


def _has_flag(argv: list[str], flag: str) -> bool:
    return any(token == flag or token.startswith(flag + "=") for token in argv)


def _load_yaml(path: str) -> dict:
    try:
        return yaml_sections(load_yaml_mapping(path, "--tapo.config"), f"--tapo.config {path}")
    except ConfigError as err:
        raise LaunchError(str(err)) from None


def _our_values(argv: list[str]) -> tuple[dict, dict, list[str]]:
    """(command-line values, YAML values, OpenRLHF's flags), keyed by dotted flag name."""
    parser = build_parser()
    known, rest = parser.parse_known_args(argv)
    cli = vars(known)
    for token in rest:
        if token.startswith(OUR_NAMESPACES):
            raise LaunchError(f"unknown flag {token.split('=')[0]}; ours are listed by `{PROG} -h`")
    if "tapo.similarity" in cli:
        cli["tapo.similarity"] = dict(cli["tapo.similarity"])
    from_yaml = _load_yaml(cli["tapo.config"]) if "tapo.config" in cli else {}
    return cli, from_yaml, rest


def _tapo_config(cli: dict, from_yaml: dict) -> TAPOConfig:
    """TAPOConfig defaults <- YAML <- command line; each given value is checked alone first, to name its origin."""
    origin, values = {}, {}
    for source, label in ((from_yaml, "in the --tapo.config YAML"), (cli, "on the command line")):
        for name in TAPO_FIELDS:
            key = f"tapo.{name}"
            if key in source:
                value = source[key]
                if name == "similarity":
                    if not isinstance(value, dict):
                        raise LaunchError(f"tapo.similarity {label} must map tool -> similarity, got {value!r}")
                    value = {**values.get("similarity", TAPOConfig().similarity), **value}
                values[name], origin[name] = value, f"--{key} ({label})"
    for name, value in values.items():
        try:
            TAPOConfig(**{name: value}).validate()
        except (ValueError, TypeError) as err:
            raise LaunchError(f"{origin[name]}: {err}") from None
    config = TAPOConfig(**values)
    try:
        config.validate()
    except (ValueError, TypeError) as err:
        raise LaunchError(f"TAPO flags {', '.join(origin.values())}: {err}") from None
    return config


def _step_config(name: str, cli: dict, from_yaml: dict):
    """The config of estimator `name` if `--<name>.enable` (command line over YAML), else None. Values are checked
    one by one first, so that the error names the flag and where it was given."""
    enable = cli.get(f"{name}.enable", from_yaml.get(f"{name}.enable"))
    config_class = ESTIMATORS[name].config
    values, origin = {}, {}
    for source, label in ((from_yaml, "in the --tapo.config YAML"), (cli, "on the command line")):
        for spec in dataclasses.fields(config_class):
            key = f"{name}.{spec.name}"
            if key in source:
                values[spec.name], origin[spec.name] = source[key], f"--{key} ({label})"
    if values and not enable:
        raise LaunchError(f"{', '.join(sorted(origin.values()))} given without --{name}.enable: add it, or drop them")
    if not enable:
        return None
    for field_name, value in values.items():
        try:
            config_class(**{field_name: value})
        except (ValueError, TypeError) as err:
            raise LaunchError(f"{origin[field_name]}: {err}") from None
    return config_class(**values)


def _loss_values(cli: dict, from_yaml: dict) -> dict:
    values = {**{k: v for k, v in from_yaml.items() if k.startswith("actor.")}, **cli}
    loss_type = values.get("actor.policy_loss_type")
    if loss_type is not None and loss_type not in POLICY_LOSSES:
        raise LaunchError(f"--actor.policy_loss_type {loss_type}: choose one of {', '.join(sorted(POLICY_LOSSES))}")
    taus = {name: values[f"actor.{name}"] for name in LOSS_FLAG_FIELDS if f"actor.{name}" in values}
    if taus and loss_type != "sapo":
        names = ", ".join(f"--actor.{name}" for name in taus)
        raise LaunchError(f"{names} only apply to --actor.policy_loss_type sapo (got {loss_type or 'ppo'})")
    for name, tau in taus.items():
        if isinstance(tau, bool) or not isinstance(tau, int | float) or not math.isfinite(tau):
            raise LaunchError(f"--actor.{name} must be a finite number, got {tau!r}")
        try:
            PolicyLossConfig(**{name: tau})
        except ValueError as err:
            raise LaunchError(f"--actor.{name}: {err}") from None
    return {
        "policy_loss_type": loss_type,
        **{name: taus.get(name, getattr(PolicyLossConfig(), name)) for name in LOSS_FLAG_FIELDS},
    }


def _agent_config(cli: dict, from_yaml: dict) -> str | None:
    path = cli.get("agent.config", from_yaml.get("agent.config"))
    if path is None:
        return None
    from openrlhf_tapo.agent.config import load_agent_config

    try:
        load_agent_config(path)
    except (OSError, ValueError) as err:
        raise LaunchError(f"--agent.config {path}: {err}") from None
    return os.path.abspath(path)


def _require_enable(cli: dict, enable: bool | None, steps: dict) -> None:
    """Our flags do nothing while TAPO is off, so giving them without --tapo.enable is a mistake to name, unless
    TAPO was turned off on purpose (--tapo.disable, or `enable: false` in the YAML). The agent's flags may also
    serve another estimator (GiGPO, the turn reward) that is on."""
    if enable is not None:
        return
    prefixes = ("tapo.",) if steps else ("tapo.", "agent.")
    given = sorted(f"--{key}" for key in cli if key.startswith(prefixes))
    if given:
        raise LaunchError(
            f"{', '.join(given)} given without --tapo.enable, so TAPO is off and {'they' if len(given) > 1 else 'it'} "
            "would be ignored. Add --tapo.enable to train with TAPO, or --tapo.disable to run without TAPO on "
            "purpose (e.g. the GRPO baseline with our agent)."
        )


@dataclasses.dataclass
class OurFlags:
    """Our flags of one command line, validated, and the OpenRLHF flags that came with them."""

    tapo: TAPOConfig
    tapo_enable: bool
    steps: dict  # name -> config of each other estimator switched on (GiGPO, turn reward)
    loss: dict
    agent_config: str | None
    dry_run: bool
    rest: list[str]  # OpenRLHF's flags, as given


def split_flags(argv: list[str]) -> OurFlags:
    """Parse and check our flags (command line over --tapo.config YAML over defaults); keep OpenRLHF's as given."""
    cli, from_yaml, rest = _our_values(argv)
    enable = cli.get("tapo.enable", from_yaml.get("tapo.enable"))
    if enable is not None and not isinstance(enable, bool):
        raise LaunchError(f"tapo.enable in the --tapo.config YAML must be true or false, got {enable!r}")
    ours = OurFlags(
        tapo=_tapo_config(cli, from_yaml),
        tapo_enable=bool(enable),
        steps={name: config for name in STEP_ESTIMATORS if (config := _step_config(name, cli, from_yaml))},
        loss=_loss_values(cli, from_yaml),
        agent_config=_agent_config(cli, from_yaml),
        dry_run=cli.get("dry_run", False),
        rest=rest,
    )
    _require_enable(cli, enable, ours.steps)  # after the values' own checks, which name a bad value more precisely
    return ours


def _openrlhf_flags(ours: OurFlags) -> list[str]:
    argv = list(ours.rest)
    if ours.loss["policy_loss_type"] is not None:
        argv += ["--actor.policy_loss_type", OPENRLHF_LOSS_TYPE[ours.loss["policy_loss_type"]]]
    if ours.agent_config and not _has_flag(argv, "--train.agent_func_path"):
        argv += ["--train.agent_func_path", EXECUTOR_PATH]
    return argv


def openrlhf_argv(argv: list[str]) -> list[str]:
    """The flags OpenRLHF's own parser receives for `argv`: all that are not ours; our loss types mapped to the
    nearest OpenRLHF type (set back after parsing); our executor as --train.agent_func_path when only
    --agent.config was given."""
    return _openrlhf_flags(split_flags(argv))


def resolve_args(argv: list[str]):
    """OpenRLHF's hierarchical args for `argv` with ours added (`args.tapo`, `args.agent`, `args.actor.sapo_tau_*`).

    Raises LaunchError / TAPOConfigError naming the bad flag, SystemExit for what OpenRLHF's own parser rejects.
    """
    ours = split_flags(argv)  # before importing OpenRLHF, so that -h and our own flag errors come at once
    from openrlhf_tapo.adapter.stage.openrlhf_args import parse_openrlhf_args
    from openrlhf_tapo.adapter.stage.openrlhf_loss import build_policy_loss

    try:
        args = parse_openrlhf_args(_openrlhf_flags(ours))
    except AssertionError as err:
        raise LaunchError(f"OpenRLHF's validation rejected the flags: {err}") from None
    except (AttributeError, TypeError, ValueError) as err:  # OpenRLHF's validation block dereferencing a missing flag
        raise LaunchError(f"OpenRLHF's validation failed on these flags ({type(err).__name__}: {err})") from None

    if ours.loss["policy_loss_type"] is not None:
        args.actor.policy_loss_type = ours.loss["policy_loss_type"]
    args.actor.sapo_tau_pos, args.actor.sapo_tau_neg = ours.loss["sapo_tau_pos"], ours.loss["sapo_tau_neg"]
    args.tapo = estimator_namespace(ours.tapo_enable, ours.tapo)
    for name in STEP_ESTIMATORS:
        config = ours.steps.get(name, ESTIMATORS[name].config())
        setattr(args, name, estimator_namespace(name in ours.steps, config))
    args.agent = SimpleNamespace(config=ours.agent_config)
    args.dry_run = ours.dry_run

    check_tapo_compatible(args)
    try:
        build_policy_loss(args)  # the constructor the actors will run, so its checks fail here, before Ray
    except ValueError as err:
        raise LaunchError(f"--actor.policy_loss_type {args.actor.policy_loss_type}: {err}") from None
    return args


def _plain(value):
    if isinstance(value, SimpleNamespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


SECRET_KEYS = re.compile(r"(^|_)(key|token|secret|password)$")


def _redacted(value, name: str = ""):
    """`value` with every non-empty secret (a key named key, api_key, token, ...) replaced: dry runs get shared."""
    if isinstance(value, dict):
        return {k: _redacted(v, k) for k, v in value.items()}
    if SECRET_KEYS.search(name) and value:
        return "<redacted>"
    return value


def describe(args) -> str:
    """The resolved configuration as JSON: OpenRLHF's args with ours, and what the Ray workers will get."""
    from openrlhf_tapo.adapter.seam import inject, ray_workers

    resolved = _redacted(_plain(args))
    resolved.pop("dry_run", None)
    with ray_workers.requested("injection", inject.launcher_env_vars(args)):
        resolved["ray_worker_runtime_env"] = ray_workers.worker_runtime_env()
    return json.dumps(resolved, indent=2, sort_keys=True)


def launch(args) -> None:
    """OpenRLHF's `train(args)`, with our experience maker and PolicyLoss injected into every Ray worker."""
    import ray
    from openrlhf.cli.train_ppo_ray import train

    from openrlhf_tapo.adapter.seam import inject, ray_workers

    inject.verify()  # before Ray starts: an OpenRLHF our patches were not written for stops here, not in a worker
    env_vars = inject.launcher_env_vars(args)
    if ray.is_initialized():
        ray_workers.require_in_session("injection", env_vars)
        train(args)
    else:
        with ray_workers.requested("injection", env_vars):
            train(args)
    complete_checkpoints(args)


def complete_checkpoints(args) -> list[Path]:
    """Add the starting model's processor and tokenizer files to every HF checkpoint the run saved (the final one in
    `--ckpt.output_dir`, and `<--ckpt.path>/*_hf` with `--ckpt.save_hf`): OpenRLHF saves the tokenizer only, and
    `cli.evaluate` needs the image processor of a VLM (`eval/checkpoint.py`). Returns the folders completed."""
    from openrlhf_tapo.eval.checkpoint import complete_checkpoint

    folders = [Path(args.ckpt.output_dir)]
    if getattr(args.ckpt, "save_hf", False) and args.ckpt.path:
        folders += sorted(Path(args.ckpt.path).glob("*_hf"))
    done = [f for f in folders if (f / "config.json").is_file()]
    for folder in done:
        complete_checkpoint(args.actor.model_name_or_path, folder)
    return done


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything written to stdout (Python's and the C libraries', e.g. DeepSpeed's accelerator line) to
    stderr, so that a dry run's stdout is the JSON alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> None:
    from openrlhf_tapo.adapter.checks.preflight import PreflightError, preflight
    from openrlhf_tapo.utils import cuda_stubs

    cuda_stubs.install()  # no-op where vllm / flash_attn import (GPU nodes); lets a CPU machine parse and dry-run
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with _stdout_to_stderr():
            args = resolve_args(argv)
            warnings = preflight(args)  # before Ray starts: a missing file or key must not cost a cluster allocation
    except (LaunchError, TAPOConfigError, PreflightError) as err:
        build_parser().exit(2, f"{PROG}: error: {err}\n")
    for warning in warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr, flush=True)
    if args.dry_run:
        print(describe(args), flush=True)
        return
    from openrlhf_tapo.adapter.checks.placement import ClusterTooSmall, refuse_if_cluster_too_small

    try:  # a running cluster without the job's free GPUs: refuse now, instead of Ray's demands pending for ever
        refuse_if_cluster_too_small(args)
    except ClusterTooSmall as err:
        build_parser().exit(2, f"{PROG}: error: {err}\n")
    launch(args)


if __name__ == "__main__":
    main()
