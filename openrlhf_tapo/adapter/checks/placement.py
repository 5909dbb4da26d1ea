"""The GPUs and CPUs an OpenRLHF 0.11.2 PPO job reserves, and a refusal when the Ray cluster it joins lacks them.

Why: OpenRLHF's `train()` creates placement groups and actors and waits for them. On a cluster with fewer free GPUs,
Ray leaves the request pending ("Pending Demands: {'CPU': 1.0, 'GPU': 1.0}" in `ray status`) and the job prints
nothing, with no time limit (measured on CPU 2026-12-06: `ray start --head --num-gpus 1` plus `ray job submit` of
the CPU launch script, which needs 2). The launcher checks first and refuses at once, naming both numbers and the
flags that set them.

How `openrlhf.cli.train_ppo_ray.train` places its actors (O = openrlhf/: cli/train_ppo_ray.py:39-150,
trainer/ray/launcher.py:240-290, trainer/ray/vllm_engine.py:239-306). Every model rank and every vLLM GPU takes one
slot of `{"GPU": 1, "CPU": 1}`. The slot is a placement-group bundle, or, for a group with one GPU per node, an actor
that asks for 1 GPU and 1 CPU. So each group needs as many slots as it has GPUs:
- actor: `--actor.num_nodes` x `--actor.num_gpus_per_node`;
- reference (only when `--algo.kl.init_coef` > 0): `--ref.*`, or the actor's slots with `--train.colocate_actor_ref`
  or `--train.colocate_all`;
- vLLM: `--vllm.num_engines` x `--vllm.tensor_parallel_size`, or the actor's slots with `--train.colocate_all`
  (unless `--train.async_enable`, which colocates only the DeepSpeed models);
- critic (a critic model, `gae`): `--critic.*`; reward model (no `--reward.remote_url`, no agent): `--reward.*`.
  Both go into the actor's slots with `--train.colocate_all`, into the critic's with `--train.colocate_critic_reward`.
- the controller (`PPOTrainer`, a plain `@ray.remote` actor) needs 1 free CPU to be scheduled and holds none after.
Colocated actors share a slot at 0.2 GPU each. That is OpenRLHF's own arithmetic, which this module does not check.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

CONTROLLER_CPUS = 1  # Ray schedules an actor without resources on 1 CPU; PPOTrainer (and the async actors) are such


class ClusterTooSmall(RuntimeError):
    """The Ray cluster the job joins has fewer free GPUs or CPUs than the job reserves."""


@dataclass(frozen=True)
class SlotGroup:
    """GPUs reserved as `{"GPU": 1, "CPU": 1}` slots for the models in `what`, sized by `flags`."""

    what: str
    slots: int
    flags: str  # how the flags give `slots`, e.g. "--actor.num_nodes 1 x --actor.num_gpus_per_node 8"


@dataclass(frozen=True)
class Placement:
    """What an OpenRLHF PPO job reserves at once: its slot groups, plus CONTROLLER_CPUS free CPUs."""

    groups: tuple[SlotGroup, ...]

    @property
    def gpus(self) -> int:
        return sum(group.slots for group in self.groups)

    @property
    def cpus(self) -> int:
        return self.gpus + CONTROLLER_CPUS

    def describe(self) -> str:
        parts = [f"{group.what}: {_count(group.slots, 'GPU')} ({group.flags})" for group in self.groups]
        return "; ".join([*parts, f"the PPO controller: {_count(CONTROLLER_CPUS, 'CPU')}"])


def _count(n: float, unit: str) -> str:
    return f"{n:g} {unit}{'' if n == 1 else 's'}"


MODEL_NAMES = {"actor": "actor", "ref": "reference", "critic": "critic", "reward": "reward model"}  # flag section


def _size(args, section: str) -> SlotGroup:
    group = getattr(args, section)
    flags = f"--{section}.num_nodes {group.num_nodes} x --{section}.num_gpus_per_node {group.num_gpus_per_node}"
    return SlotGroup(MODEL_NAMES[section], group.num_nodes * group.num_gpus_per_node, flags)


def job_placement(args) -> Placement:
    """The slots OpenRLHF 0.11.2's `train(args)` reserves for `args` (its parsed, hierarchical flags)."""
    train = args.train
    uses_vllm = bool(args.vllm.num_engines)
    uses_ref = args.algo.kl.init_coef > 0
    uses_critic = bool(args.critic.model_name_or_path)
    uses_reward_model = not args.reward.remote_url
    vllm_in_actor_slots = uses_vllm and train.colocate_all and not train.async_enable
    critic_slots = train.colocate_critic_reward and uses_critic  # the critic's own group, shared with the reward
    actor = _size(args, "actor")
    groups = []
    if train.colocate_all or train.colocate_actor_ref:
        in_actor_slots = {
            "reference": uses_ref,
            "vLLM engines": vllm_in_actor_slots,
            "critic": train.colocate_all and uses_critic and not critic_slots,
            "reward model": train.colocate_all and uses_reward_model and not critic_slots,
        }
        sharing = ["actor", *(name for name, shared in in_actor_slots.items() if shared)]
        flag = "--train.colocate_all" if train.colocate_all else "--train.colocate_actor_ref"
        groups.append(SlotGroup(" + ".join(sharing), actor.slots, f"{actor.flags}, shared by {flag}"))
    else:
        groups.append(actor)
        if uses_ref:
            groups.append(_size(args, "ref"))
    if uses_vllm and not vllm_in_actor_slots:
        vllm = args.vllm
        flags = f"--vllm.num_engines {vllm.num_engines} x --vllm.tensor_parallel_size {vllm.tensor_parallel_size}"
        groups.append(SlotGroup("vLLM engines", vllm.num_engines * vllm.tensor_parallel_size, flags))
    if critic_slots:
        critic = _size(args, "critic")
        sharing = "critic + reward model" if uses_reward_model else "critic"
        groups.append(SlotGroup(sharing, critic.slots, f"{critic.flags}, shared by --train.colocate_critic_reward"))
    elif not train.colocate_all:
        groups += [_size(args, section) for section, used in (("critic", uses_critic), ("reward", uses_reward_model))
                   if used]  # fmt: skip
    return Placement(tuple(groups))


def shortfall(placement: Placement, free: dict, total: dict, where: str) -> str | None:
    """None when `free` resources (Ray's `available_resources()`) hold `placement`; else the refusal's message,
    with both numbers and the flags to change. `total` (`cluster_resources()`) tells a busy cluster from a small one.
    """
    free_gpus, free_cpus = (math.floor(free.get(key, 0.0) + 1e-9) for key in ("GPU", "CPU"))
    if placement.gpus <= free_gpus and placement.cpus <= free_cpus:
        return None
    busy = (
        " Other jobs hold the rest (`ray status`, `ray job list`)."
        if placement.gpus <= total.get("GPU", 0.0) and placement.cpus <= total.get("CPU", 0.0)
        else ""
    )
    colocate = (
        ""
        if len(placement.groups) == 1
        else "; or --train.colocate_all, which puts the actor, the reference and the vLLM engines on the same GPUs "
        "(--vllm.num_engines x --vllm.tensor_parallel_size must then equal the actor's GPUs)"
    )
    return (
        f"this job reserves {_count(placement.gpus, 'GPU')} and {_count(placement.cpus, 'CPU')} at once "
        f"({placement.describe()}), but {where} has {_count(free.get('GPU', 0.0), 'GPU')} and "
        f"{_count(free.get('CPU', 0.0), 'CPU')} free (of {_count(total.get('GPU', 0.0), 'GPU')} and "
        f"{_count(total.get('CPU', 0.0), 'CPU')}).{busy} Ray would leave the job pending without an error. Lower the "
        f"flags named above{colocate}; or add GPUs to the cluster (`ray start --num-gpus N` on each node)."
    )


def cluster_to_join() -> str | None:
    """The cluster `ray.init()` joins from this process (RAY_ADDRESS, set by `ray job submit` too, or the cluster
    `ray start` left on this machine), or None when it would start a node of its own."""
    from ray._private import services

    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith("ray://"):  # Ray Client: ray.init takes it as is
        return address
    return services.canonicalize_bootstrap_address(None)


def refuse_if_cluster_too_small(args) -> None:
    """Raise ClusterTooSmall when the Ray session already initialised, or the running cluster `train()` will join,
    has fewer free GPUs/CPUs than `args` reserve. A node this process starts itself is not checked: the CPU profile
    sizes it (adapter/seam/cpu_profile.py, CPU_NODE) and on GPUs Ray counts the node's devices."""
    import ray

    placement = job_placement(args)
    if ray.is_initialized():
        where, free, total = "the Ray session", ray.available_resources(), ray.cluster_resources()
    else:
        address = cluster_to_join()
        if address is None:
            return
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        try:
            free, total = ray.available_resources(), ray.cluster_resources()
        finally:
            ray.shutdown()
        where = f"the Ray cluster at {address}"
    message = shortfall(placement, free, total, where)
    if message:
        raise ClusterTooSmall(message)
