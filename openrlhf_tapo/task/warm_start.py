"""Supervised warm start on correct tool-use traces, so RL starts from a policy that sometimes follows the protocol.

The traces are made by the REAL rollout path: our `AgentExecutor` runs every training question with a scripted
engine that "generates" the question's gold actions (the tool calls, then the answer) while the real tools answer
from the local index. The token sequences, the tool responses, the returned images and the action ranges are
therefore exactly what RL rollouts produce, and OpenRLHF's `SamplesGenerator` conversion turns them into
`Experience`s whose `action_mask` marks the assistant turns (the SFT loss mask).

Training is a minimal loop on OpenRLHF's own pieces: `Actor.forward` for the per-token log-probs (with the
multimodal inputs merged by `merge_mm_train_inputs`) and `SFTLoss` (OpenRLHF's SFT objective, token-mean).
OpenRLHF's `SFTTrainer` itself is not used: it needs a DeepSpeed engine and a `torch.distributed` group (its
`strategy.backward/optimizer_step` call the engine) and its `SFTDataset` tokenises chat messages itself, so it
cannot take multi-turn traces whose tool responses carry images and whose loss mask comes from the executor.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from openrlhf.models.loss import SFTLoss
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.utils.vlm_utils import merge_mm_train_inputs

from openrlhf_tapo.agent.hf_engine import CompletionOutput, RequestOutput
from openrlhf_tapo.task.inprocess import Actor, responses_to_experiences


@dataclass
class WarmStartConfig:
    """epochs: passes over the gold traces. micro_batch_size: traces per optimizer step.
    lr: AdamW learning rate (a tiny randomly initialised model needs a large one). seed: shuffling."""

    epochs: int = 6
    micro_batch_size: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0


class ScriptedEngine:
    """An engine with the vLLM-actor `generate` contract that returns the given assistant turns, in order."""

    def __init__(self, tokenizer, turns: list[str]):
        self.tokenizer = tokenizer
        self.turns = list(turns)

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None) -> RequestOutput:
        if not self.turns:
            raise RuntimeError("the executor asked for more turns than the gold trace has")
        text = self.turns.pop(0)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        stop = next((s for s in (getattr(sampling_params, "stop", None) or []) if text.endswith(s)), None)
        return RequestOutput(list(prompt_token_ids), [CompletionOutput(0, text, ids, "stop", stop)])


async def _gold_responses(
    executor, rows: list[dict], gold_turns: list[list[str]], processor, sampling_params, max_len
):
    tokenizer = getattr(processor, "tokenizer", processor)

    async def one(row, turns):
        engine = ScriptedEngine(tokenizer, turns)
        return await executor.execute(
            row["prompt"], row["label"], sampling_params.clone(), max_len, processor, engine, images=row.get("images")
        )

    return await asyncio.gather(*(one(row, turns) for row, turns in zip(rows, gold_turns, strict=True)))


def gold_traces(executor, rows: list[dict], gold_turns: list[list[str]], processor, sampling_params, max_len: int):
    """Agent-executor responses for `rows` (prompt rows) whose assistant turns are `gold_turns`."""
    return asyncio.run(_gold_responses(executor, rows, gold_turns, processor, sampling_params, max_len))


def sft_step_loss(actor: Actor, batch: Experience, loss_fn: SFTLoss) -> torch.Tensor:
    mm = (
        merge_mm_train_inputs(batch.mm_train_inputs, "cpu")
        if any(m is not None for m in batch.mm_train_inputs)
        else {}
    )
    log_probs = actor(batch.sequences, batch.action_mask, attention_mask=batch.attention_mask, **mm)
    return loss_fn(log_probs, batch.action_mask)


def warm_start(
    actor: Actor,
    responses: list[dict],
    pad_token_id: int,
    max_len: int,
    config: WarmStartConfig,
    progress: Callable[[str], None] = print,
) -> list[float]:
    """Train `actor` in place on the gold `responses`; returns the loss of every optimizer step."""
    experiences = responses_to_experiences(responses, max_len)
    optimizer = torch.optim.AdamW(
        [p for p in actor.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    loss_fn = SFTLoss()
    rng = random.Random(config.seed)
    losses: list[float] = []
    actor.train()
    start = time.time()
    for epoch in range(config.epochs):
        order = list(range(len(experiences)))
        rng.shuffle(order)
        for i in range(0, len(order), config.micro_batch_size):
            batch = Experience.concat_experiences(
                [experiences[j] for j in order[i : i + config.micro_batch_size]], pad_token_id
            )
            loss = sft_step_loss(actor, batch, loss_fn)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        progress(
            f"  warm start epoch {epoch + 1}/{config.epochs}: loss {losses[-1]:.3f} ({time.time() - start:.0f} s)"
        )
    actor.eval()
    return losses
