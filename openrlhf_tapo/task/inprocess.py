"""OpenRLHF 0.11.2's own training classes, driven in ONE process on CPU (no Ray actors, no DeepSpeed engine).

On a cluster these run inside Ray actors that own a DeepSpeed engine. Here the same methods are called directly:

- `PolicyModelActor.forward` (the actor group's log-prob forward that `RemoteExperienceMaker.make_experience`
  dispatches) computes `action_log_probs` with OpenRLHF's `Actor`;
- `SamplesGenerator._process_response_into_experience` turns an agent-executor response into an `Experience`;
- `RemoteExperienceMaker.split_rollout_samples` groups them into micro-batches and records `experience.index`;
- `ActorPPOTrainer.ppo_train` / `training_step` run the PPO epoch: `NaiveReplayBuffer`, global token-mean
  normalisation (`iter_grad_accum_global_norm`), the policy loss, KL/entropy terms, metric reduction.

What stands in for the distributed parts is `InProcessStrategy`: the five methods of `DeepspeedStrategy` those
calls reach (backward, optimizer_step, get_grad_norm, all_reduce, is_rank_0), implemented for one process with a
plain torch optimizer (gradient accumulation and clipping as DeepSpeed's engine does them). Two CUDA-only lines
are bridged, each with a scoped patch: `ppo_train` and `NaiveReplayBuffer.__init__` ask `torch.cuda.current_device()`
for the device to move batches to (answered "cpu"; the buffer only stores it as `cuda:0` and never uses it on the
`ppo_train` path). `ActorPPOTrainer.__init__` is not run: it opens the vLLM weight-sync group and a
`torch.distributed` barrier, neither of which exists in one process (the rollout engine shares the actor's weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from unittest import mock

import torch
from openrlhf.models import Actor
from openrlhf.trainer.ppo_trainer import BasePPOTrainer
from openrlhf.trainer.ppo_utils import NaiveReplayBuffer
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer, PolicyModelActor


@contextlib.contextmanager
def _current_device(value) -> Iterator[None]:
    """`torch.cuda.current_device()` answers `value` inside the block (CPU torch raises instead)."""
    with mock.patch.object(torch.cuda, "current_device", lambda: value):
        yield


class InProcessStrategy:
    """The part of OpenRLHF's `DeepspeedStrategy` that `ActorPPOTrainer.ppo_train` uses, for one CPU process.

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
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm)) if params else 0.0
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        self.optimizer_steps += 1

    def get_grad_norm(self, model) -> float:
        return self._grad_norm


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


def split_rollout_samples(maker, experiences: list[Experience]) -> list[Experience]:
    """The experience maker's own micro-batching (sets `experience.index`, the rollout order GRPO groups by)."""
    return maker.split_rollout_samples(experiences)


@torch.no_grad()
def attach_log_probs(actor: Actor, experiences: list[Experience], use_kl_loss: bool = False) -> list[Experience]:
    """What `RemoteExperienceMaker.make_experience` does with no reference model and no critic: the actor group's
    `PolicyModelActor.forward` per micro-batch, zero KL, and the `kl` / `logprobs_diff` info entries."""
    holder = SimpleNamespace(actor=actor, strategy=SimpleNamespace(ring_attn_group=None))
    forward = PolicyModelActor.__ray_actor_class__.forward
    with _current_device("cpu"):
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


def build_actor_trainer(strategy: InProcessStrategy, actor: Actor, optimizer, scheduler, loss_fn, tokenizer):
    """An `ActorPPOTrainer` with the attributes its `__init__` sets, minus the vLLM sync group and the barrier."""
    args = strategy.args
    trainer = ActorPPOTrainer.__new__(ActorPPOTrainer)
    trainer.strategy, trainer.args, trainer.tokenizer = strategy, args, tokenizer
    trainer.generate_kwargs, trainer.dataloader_pin_memory = {}, False
    trainer.micro_train_batch_size = args.train.micro_batch_size
    trainer.ema_beta, trainer.ema_model = 0.992, None
    trainer.actor, trainer.actor_optim, trainer.actor_scheduler = actor, optimizer, scheduler
    trainer.vllm_engines, trainer.max_epochs = None, args.train.max_epochs
    trainer.actor_loss_fn = loss_fn
    trainer.aux_loss = args.actor.aux_loss_coef > 1e-8
    with _current_device(0):
        trainer.replay_buffer = NaiveReplayBuffer(
            args.train.micro_batch_size, 0, True, args.ds.packing_samples, args.train.dynamic_batch_enable
        )
    trainer.use_cuda_ipc = False
    return trainer


def ppo_train(trainer: ActorPPOTrainer, experiences: list[Experience], kl_coef: float = 0.0) -> dict[str, float]:
    """Append the batch to the replay buffer and run OpenRLHF's `ppo_train` epoch(s); returns its status means."""
    for exp in experiences:
        trainer.replay_buffer.append(exp)
    try:
        with _current_device("cpu"):
            return trainer.ppo_train(kl_coef)
    finally:
        trainer.replay_buffer.clear()
