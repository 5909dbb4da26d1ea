"""OpenRLHF 0.11.2's own training classes, driven in ONE process on CPU (no Ray actors, no DeepSpeed engine).

On a cluster these run inside Ray actors that own a DeepSpeed engine. Here the same methods are called directly:

- `PolicyModelActor.forward` (the actor group's log-prob forward that `RemoteExperienceMaker.make_experience`
  dispatches) computes `action_log_probs` with OpenRLHF's `Actor`;
- `SamplesGenerator._process_response_into_experience` turns an agent-executor response into an `Experience`;
- `RemoteExperienceMaker.split_rollout_samples` groups them into micro-batches and records `experience.index`;
- `ActorPPOTrainer.ppo_train` / `training_step` run the PPO epoch: `NaiveReplayBuffer`, global token-mean
  normalisation (`iter_grad_accum_global_norm`), the policy loss, KL/entropy terms, metric reduction.

What stands in for the distributed parts, and nothing else:

- `InProcessStrategy`: the methods of `DeepspeedStrategy` those calls reach (backward, optimizer_step,
  get_grad_norm, all_reduce, is_rank_0, print), for one process with a plain torch optimizer (gradient accumulation
  and clipping as DeepSpeed's engine does them);
- no weight-sync group: `ActorPPOTrainer` is built by its own `__init__` with `vllm_engines=None` (OpenRLHF's "generate
  with the actor model directly", which the in-process rollout engine does: it shares the actor's weights), so
  `__init__` opens no vLLM group; the `torch_dist_barrier_and_cuda_sync()` that closes its set-up is, for a world of
  one process on CPU, a no-op (`_no_weight_sync`).

CUDA-only device queries are answered by scoped patches (`_current_device`): `NaiveReplayBuffer.__init__` (run by
`ActorPPOTrainer.__init__`) stores `cuda:<current_device>` as a target it never uses on the `ppo_train` path (answered
0), and `ppo_train` / `PolicyModelActor.forward` move batches to `torch.cuda.current_device()` (answered "cpu").
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from types import SimpleNamespace
from unittest import mock

import torch
from openrlhf.models import Actor
from openrlhf.trainer.ppo_trainer import BasePPOTrainer
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.trainer.ray import ppo_actor
from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer, PolicyModelActor
from openrlhf.utils.deepspeed.deepspeed_utils import get_optimizer_grouped_parameters
from transformers import get_scheduler

from openrlhf_tapo.adapter.stage.openrlhf_loss import build_policy_loss


@contextlib.contextmanager
def _current_device(value) -> Iterator[None]:
    """`torch.cuda.current_device()` answers `value` inside the block (CPU torch raises instead)."""
    with mock.patch.object(torch.cuda, "current_device", lambda: value):
        yield


class InProcessStrategy:
    """The part of OpenRLHF's `DeepspeedStrategy` that `ActorPPOTrainer` (its `__init__`, `ppo_train`) uses, for one
    CPU process.

    `accumulated_gradient` (gas) micro-batches make one optimizer step (DeepSpeed's gradient accumulation, with its
    1 / gas loss scaling), gradients are clipped to `max_norm` (DeepSpeed's `gradient_clipping`), and
    `get_grad_norm` reports the pre-clip norm.
    """

    ring_attn_group = None

    def __init__(self, args, accumulated_gradient: int = 1, max_norm: float = 1.0):
        self.args = args
        self.accumulated_gradient = max(1, int(accumulated_gradient))
        self.max_norm = max_norm
        self._micro_steps = 0
        self._grad_norm = 0.0
        self.optimizer_steps = 0

    def is_rank_0(self) -> bool:
        return True

    def all_reduce(self, data, op: str = "mean"):
        return data  # world size 1: every reduction is the identity

    def print(self, *msg) -> None:
        print(*msg)

    def backward(self, loss: torch.Tensor, model, optimizer, **kwargs) -> None:
        # DeepSpeed scales every backward by 1 / gas; OpenRLHF's loss normalisers pre-compensate for it.
        (loss / self.accumulated_gradient).backward()

    def optimizer_step(self, optimizer, model, scheduler, name: str = "model", **kwargs) -> None:
        self._micro_steps += 1
        if self._micro_steps % self.accumulated_gradient:
            return
        # the model's parameter order, whatever the optimizer's groups: the norm's float sum does not change with them
        params = [p for p in model.parameters() if p.grad is not None]
        self._grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm)) if params else 0.0
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        self.optimizer_steps += 1

    def get_grad_norm(self, model) -> float:
        return self._grad_norm


# `min_lr_rate` is a keyword of these two transformers schedulers only; the others raise TypeError on it
MIN_LR_SCHEDULERS = frozenset({"cosine_with_min_lr", "cosine_warmup_with_min_lr"})


def build_optimizer_and_scheduler(actor: Actor, args, scheduler_steps: int):
    """The actor's optimizer and lr schedule by the rule of OpenRLHF's `DeepspeedStrategy._ds_init_train_model`
    (reachable only through a DeepSpeed engine; declared in adapter/seam/patches.py's INPROCESS): AdamW over OpenRLHF's
    `get_optimizer_grouped_parameters` (bias and norm weights without weight decay; torch's AdamW, as DeepSpeed's
    `torch_adam`), and transformers' `get_scheduler` with `min_lr_rate` for the cosine-with-min-lr schedules only.
    `scheduler_steps` counts optimizer steps, as OpenRLHF's `max_steps`."""
    if args.actor.optim != "adam":
        raise ValueError(
            f"--actor.optim {args.actor.optim}: the in-process driver has no DeepSpeed engine, whose Muon optimizer "
            "OpenRLHF uses; use --actor.optim adam here, or the Ray pipeline (--engine ray)"
        )
    adam = args.actor.adam
    groups = get_optimizer_grouped_parameters(actor.model, adam.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=adam.lr, betas=adam.betas, eps=adam.eps, weight_decay=adam.weight_decay)
    name = args.actor.lr_scheduler
    try:
        scheduler = get_scheduler(
            name,
            optimizer,
            num_warmup_steps=math.ceil(scheduler_steps * args.actor.lr_warmup_ratio),
            num_training_steps=scheduler_steps,
            scheduler_specific_kwargs={"min_lr_rate": args.actor.min_lr_ratio} if name in MIN_LR_SCHEDULERS else {},
        )
    except TypeError as error:  # a schedule that needs more than OpenRLHF passes (warmup_stable_decay)
        raise ValueError(
            f"--actor.lr_scheduler {name} needs arguments OpenRLHF does not pass ({error}); choose another schedule"
        ) from error
    if _steps_on_a_metric(scheduler):
        raise ValueError(
            f"--actor.lr_scheduler {name} steps on a metric, and OpenRLHF (DeepSpeed's engine) steps its scheduler "
            "without one; choose another schedule"
        )
    return optimizer, scheduler


def _steps_on_a_metric(scheduler) -> bool:
    """`scheduler.step` has a required argument (reduce_lr_on_plateau, greedy: the metric to watch)."""
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    params = inspect.signature(scheduler.step).parameters.values()
    return any(p.default is p.empty and p.kind not in variadic for p in params)


def load_actor(model_path: str) -> Actor:
    """OpenRLHF's `Actor` loaded from a HF folder (its own loading code, sdpa attention), trained in float32.

    `Actor` only loads bf16/fp16; CPU kernels are fast and stable in float32, so the weights are cast up after.
    """
    actor = Actor(model_path, attn_implementation="sdpa", param_dtype="bf16")
    actor.model.float()
    return actor


def responses_to_experiences(responses: list[dict], max_len: int) -> list[Experience]:
    """One `Experience` per agent-executor response, by OpenRLHF's `SamplesGenerator` conversion."""
    convert = SamplesGenerator._process_response_into_experience
    return [convert(None, response, max_len=max_len) for response in responses]


@contextlib.contextmanager
def rollout_temperature(actor: Actor, temperature: float) -> Iterator[None]:
    """Inside the block the actor's log-probs are those of the temperature-scaled policy the rollout sampled from,
    as `PolicyModelActor.init_model_from_pretrained` builds its actor (`temperature=args.rollout.temperature`).
    Scoped: the warm start and the evaluations share this actor at temperature 1."""
    previous, actor.temperature = actor.temperature, temperature
    try:
        yield
    finally:
        actor.temperature = previous


@torch.no_grad()
def attach_log_probs(
    actor: Actor, experiences: list[Experience], use_kl_loss: bool = False, temperature: float = 1.0
) -> list[Experience]:
    """What `RemoteExperienceMaker.make_experience` does with no reference model and no critic: the actor group's
    `PolicyModelActor.forward` per micro-batch (at the rollout `temperature`), zero KL, and the `kl` /
    `logprobs_diff` info entries."""
    holder = SimpleNamespace(actor=actor, strategy=SimpleNamespace(ring_attn_group=None))
    forward = PolicyModelActor.__ray_actor_class__.forward
    with _current_device("cpu"), rollout_temperature(actor, temperature):
        for exp in experiences:
            mm = exp.mm_train_inputs if any(m is not None for m in exp.mm_train_inputs) else None
            log_probs = forward(holder, exp.sequences, exp.action_mask, exp.attention_mask, mm_train_inputs_list=mm)
            exp.action_log_probs = log_probs
            exp.base_action_log_probs = torch.zeros_like(log_probs) if use_kl_loss else None
            exp.values = None
            exp.kl = torch.zeros_like(log_probs)
            exp.info["kl"] = torch.zeros(len(exp.sequences))
            exp.info["logprobs_diff"] = torch.zeros(len(exp.sequences))
    return experiences


def rollout_stats(experiences: list[Experience]) -> dict[str, float]:
    """`BasePPOTrainer._compute_rollout_stats` (rollout/reward_mean, response length, truncation)."""
    return BasePPOTrainer._compute_rollout_stats(None, experiences)


@contextlib.contextmanager
def _no_weight_sync() -> Iterator[None]:
    """`ActorPPOTrainer.__init__`'s closing barrier + CUDA sync, for one process without CUDA: nothing to wait for."""
    with mock.patch.object(ppo_actor, "torch_dist_barrier_and_cuda_sync", lambda: None):
        yield


def build_actor_trainer(strategy: InProcessStrategy, actor: Actor, optimizer, scheduler, tokenizer):
    """OpenRLHF's `ActorPPOTrainer`, built by its own `__init__` with the arguments
    `PolicyModelActor.init_model_from_pretrained` passes, and no vLLM engines (see the module doc). Its PolicyLoss is
    then replaced by ours from the same args, as the Ray workers' patched `__init__` does (seam/inject.py). Pinned
    memory is off: there is no GPU to copy to."""
    args = strategy.args
    with _current_device(0), _no_weight_sync():
        trainer = ActorPPOTrainer(
            strategy,
            actor,
            ema_model=None,
            actor_optim=optimizer,
            actor_scheduler=scheduler,
            micro_train_batch_size=args.train.micro_batch_size,
            tokenizer=tokenizer,
            eps_clip=args.actor.eps_clip,
            ema_beta=args.train.ema_beta,
            dataloader_pin_memory=False,
            vllm_engines=None,
        )
    trainer.actor_loss_fn = build_policy_loss(args)
    return trainer


def ppo_train(trainer: ActorPPOTrainer, experiences: list[Experience], kl_coef: float = 0.0) -> dict[str, float]:
    """Append the batch to the replay buffer and run OpenRLHF's `ppo_train` epoch(s) (the actor at the rollout
    temperature); returns its status means."""
    for exp in experiences:
        trainer.replay_buffer.append(exp)
    try:
        with _current_device("cpu"), rollout_temperature(trainer.actor, trainer.args.rollout.temperature):
            return trainer.ppo_train(kl_coef)
    finally:
        trainer.replay_buffer.clear()
