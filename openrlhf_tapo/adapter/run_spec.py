"""The RL run's specification, and the one place where it becomes OpenRLHF's (and our) flags.

Every engine trains from the same rendering, `RLConfig.openrlhf_flags()` and `RLConfig.tapo_flags()` (TAPO's and the
other estimators' flags):
- the in-process loop (adapter/inprocess/loop.py) parses OpenRLHF's, plus where the run writes, with OpenRLHF's own
  parser, and sets `args.tapo` (and `args.<estimator>`) from the same fields our CLI parses `tapo_flags` into;
- the Ray demo (runners/ray_subprocess.py) appends both, plus `episode_flags` and where the run writes, to
  examples/scripts/train_tapo_cpu.sh (our CLI; argparse: a later flag wins);
- the script's own flags, run without any, resolve to the rendering of the script's run for every key the rendering
  sets (tests/test_launch_scripts.py: `test_cpu_script_is_the_run_spec`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrlhf_tapo.adapter.stage.credit_args import STEP_ESTIMATORS
from openrlhf_tapo.adapter.stage.openrlhf_args import OPENRLHF_LOSS_TYPE
from openrlhf_tapo.algorithms.estimators import ESTIMATORS
from openrlhf_tapo.algorithms.tapo import TAPOConfig

EXECUTOR_PATH = str(Path(__file__).resolve().parents[1] / "agent" / "executor.py")


@dataclass
class RLConfig:
    """The RL run. Field names follow the flag each one sets (`openrlhf_flags`, `tapo_flags`).

    steps: RL steps (one rollout batch + one ppo_train epoch each).
    prompts_per_step / n_samples_per_prompt: `--rollout.batch_size` / `--rollout.n_samples_per_prompt` (GRPO groups).
    micro_batch_size: `--train.micro_batch_size` (gradient accumulation up to `--train.batch_size`).
    updates_per_step: optimizer steps per rollout batch, as `--train.batch_size` = rollout samples / updates_per_step
    (PPO's mini-batches over a shuffled replay buffer). 1 keeps every update on-policy (the study's: there SAPO's
    and GSPO's ratios are 1); more move the policy further per rollout at no extra generation, the later updates
    off-policy, where the ratio and its clip act.
    lr: `--actor.adam.lr` (large: the model is tiny). temperature: `--rollout.temperature`.
    max_len: `--data.max_len`, prompt + all turns of a trajectory.
    policy_loss_type: `--actor.policy_loss_type` (ppo | gspo | gspo_token | sapo).
    entropy_coef: `--actor.entropy_coef` (None: OpenRLHF computes no entropy term).
    tapo_enable / tapo: `--tapo.enable` (`--tapo.disable`) and the TAPOConfig fields (`--tapo.beta`, ...).
    step_credit: the other advantage estimators switched on, name -> config (`{"gigpo": GiGPOConfig()}`:
    `--gigpo.enable` and its fields; algorithms/estimators.py). Empty: none.
    seed: `--train.seed`.
    """

    steps: int = 12
    prompts_per_step: int = 4
    n_samples_per_prompt: int = 4
    micro_batch_size: int = 4
    updates_per_step: int = 1
    lr: float = 5e-4
    temperature: float = 1.0
    max_len: int = 1536
    policy_loss_type: str = "ppo"
    entropy_coef: float | None = None
    tapo_enable: bool = True
    tapo: TAPOConfig = field(default_factory=TAPOConfig)
    step_credit: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def openrlhf_flags(self) -> list[str]:
        """The run's settings as OpenRLHF's flags (GRPO: group_norm, no KL; one epoch per rollout batch; our
        executor as the agent). Where the run reads and writes is the caller's."""
        argv = [
            "--actor.num_gpus_per_node", "1",
            "--algo.advantage.estimator", "group_norm",
            "--algo.kl.init_coef", "0",
            "--rollout.batch_size", str(self.prompts_per_step),
            "--rollout.n_samples_per_prompt", str(self.n_samples_per_prompt),
            "--rollout.micro_batch_size", str(self.n_samples_per_prompt),
            "--rollout.temperature", str(self.temperature),
            "--train.batch_size", str(self.train_batch_size()),
            "--train.micro_batch_size", str(self.micro_batch_size),
            "--train.max_epochs", "1",
            "--train.seed", str(self.seed),
            "--train.agent_func_path", EXECUTOR_PATH,
            "--data.max_len", str(self.max_len),
            "--actor.adam.lr", str(self.lr),
            "--actor.lr_warmup_ratio", "0",
            "--actor.policy_loss_type", self.policy_loss_type,
        ]  # fmt: skip
        if self.entropy_coef is not None:
            argv += ["--actor.entropy_coef", str(self.entropy_coef)]
        return argv

    def __post_init__(self) -> None:
        """Refuse a run OpenRLHF could not train, naming the field and the fix, when the spec is built (not when
        it is rendered, after a task and a warm start have been paid for)."""
        for name in ("steps", "prompts_per_step", "n_samples_per_prompt", "micro_batch_size", "updates_per_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RLConfig.{name} must be an integer >= 1, got {value!r}")
        if not self.lr > 0 or self.temperature < 0 or self.max_len < 1:
            raise ValueError(
                f"RLConfig: lr must be > 0, temperature >= 0 and max_len >= 1; got lr {self.lr}, temperature "
                f"{self.temperature}, max_len {self.max_len}"
            )
        if self.policy_loss_type not in OPENRLHF_LOSS_TYPE:
            raise ValueError(
                f"RLConfig.policy_loss_type {self.policy_loss_type!r}: choose from {', '.join(OPENRLHF_LOSS_TYPE)}"
            )
        samples, updates = self.prompts_per_step * self.n_samples_per_prompt, self.updates_per_step
        if samples % updates or (samples // updates) % self.micro_batch_size:
            raise ValueError(
                f"RLConfig.updates_per_step {updates} must split the {samples} rollout samples of a step "
                f"(prompts_per_step x n_samples_per_prompt) into equal mini-batches that are whole multiples of "
                f"micro_batch_size {self.micro_batch_size}: choose updates_per_step among the divisors of "
                f"{samples // self.micro_batch_size}, or another micro_batch_size"
            )

    def train_batch_size(self) -> int:
        """`--train.batch_size`: the rollout batch's samples per optimizer step (`__post_init__` checked the split)."""
        return self.prompts_per_step * self.n_samples_per_prompt // self.updates_per_step

    def tapo_flags(self) -> list[str]:
        """Our credit flags (cli/train_ppo_ray.py's parser): TAPO's switch, then every TAPOConfig field that is not
        at its default (a default is defined once, in its dataclass); then `--<name>.enable` and the non-default
        fields of each estimator in `step_credit`."""
        argv = ["--tapo.enable" if self.tapo_enable else "--tapo.disable", *_field_flags("tapo", self.tapo)]
        for name, config in self.step_credit.items():
            if name not in STEP_ESTIMATORS or not isinstance(config, ESTIMATORS[name].config):
                raise ValueError(
                    f"step_credit[{name!r}] must be one of {STEP_ESTIMATORS} with its config dataclass, got "
                    f"{type(config).__name__}"
                )
            argv += [f"--{name}.enable", *_field_flags(name, config)]
        return argv

    def episode_flags(self, num_train_prompts: int) -> list[str]:
        """For a launcher that reads its prompts from the dataset (the Ray pipeline): `steps` training steps of one
        rollout batch each, as `--data.max_samples` = steps x prompts per step and as many `--train.num_episodes`
        as that needs (an episode repeats the prompts when the split has fewer)."""
        wanted = self.steps * self.prompts_per_step
        samples = min(wanted, num_train_prompts)
        samples -= samples % self.prompts_per_step
        if samples <= 0:
            raise ValueError(f"{num_train_prompts} train prompts < {self.prompts_per_step} prompts per step")
        return ["--data.max_samples", str(samples), "--train.num_episodes", str(math.ceil(wanted / samples))]


def _field_flags(section: str, config) -> list[str]:
    """`--<section>.<field> VALUE` for every field of a config dataclass that is not at its default."""
    argv, default = [], type(config)()
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if value == getattr(default, spec.name):
            continue
        if isinstance(value, bool):
            argv.append(f"--{section}.{spec.name}" if value else f"--{section}.{spec.metadata['off']}")
        elif isinstance(value, dict):
            dropped = sorted(set(getattr(default, spec.name)) - set(value))
            if dropped:  # the flag's pairs merge over the defaults: there is no flag that removes one
                raise ValueError(f"{section}.{spec.name} without the default tools {dropped} has no flags")
            argv += [f"--{section}.{spec.name}", *(f"{tool}={name}" for tool, name in value.items())]
        else:
            argv += [f"--{section}.{spec.name}", "off" if value is None else str(value)]
    return argv


def output_flags(run_dir: Path, run_name: str) -> list[str]:
    """Where a run writes: OpenRLHF's TensorboardLogger to `run_dir/tensorboard/<run_name>`."""
    return ["--logger.tensorboard_dir", str(run_dir / "tensorboard"), "--logger.wandb.run_name", run_name]
