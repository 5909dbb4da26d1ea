"""Supervised warm start on a weak teacher's tool-use traces, so RL starts from a policy that follows the protocol
and has room to improve.

The traces are made by the REAL rollout path: our `AgentExecutor` runs every training question with a scripted
engine that "generates" the given turns (the gold or the teacher's tool calls, then the answer) while the real
tools answer from the local index. The token sequences, the tool responses, the returned images and the action
ranges are therefore exactly what RL rollouts produce, and OpenRLHF's `SamplesGenerator` conversion turns them into
`Experience`s whose `action_mask` marks the assistant turns (the SFT loss mask).

Training is a minimal loop on OpenRLHF's own pieces: `Actor.forward` for the per-token log-probs (with the
multimodal inputs merged by `merge_mm_train_inputs`) and `SFTLoss` (OpenRLHF's SFT objective, token-mean).
OpenRLHF's `SFTTrainer` itself is not used: it needs a DeepSpeed engine and a `torch.distributed` group (its
`strategy.backward/optimizer_step` call the engine) and its `SFTDataset` tokenises chat messages itself, so it
cannot take multi-turn traces whose tool responses carry images and whose loss mask comes from the executor.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from openrlhf.models.loss import SFTLoss
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.utils.vlm_utils import merge_mm_train_inputs
from transformers import get_scheduler

from openrlhf_tapo.adapter.inprocess.trainer import Actor, responses_to_experiences
from openrlhf_tapo.agent import protocol
from openrlhf_tapo.agent.hf_engine import CompletionOutput, RequestOutput
from openrlhf_tapo.task.questions import teacher_actions


@dataclass
class WarmStartConfig:
    """The supervised warm start.

    traces: training questions the teacher writes a trace for (one each; the questions' own entities).
    direct_share / misread_share: the weak teacher (`questions.teacher_actions`): the share of traces that answer
    without tools, and of searched traces that answer the news item's city. They put the warm start's sampled
    accuracy in the range where RL has room (set once from the gates; docs/results.md).
    known_search_share: on RECALL questions (the recall_cost preset only; no effect on the default task), the share
    of the teacher's traces that search before answering the known city; the rest answer directly. Searching on
    known entities is the over-use of the tool that RL under a search penalty can take away.
    steps / batch_size: optimizer steps and traces per step. lr: AdamW peak, reached after `warmup_steps` and
    decayed along a cosine to `min_lr_ratio` of it. seed: trace sampling and batch order.
    content_steps: the first steps train on the content tokens alone (`content_spans`: call argument values and
    answers) of GOLD traces: a clean copying-and-reading curriculum. The rest train on every assistant token of
    the weak teacher's traces. Measured on this model: with whole turns in the loss from the start, copying a name
    from an observation into a call was not learned in 300 steps (the model settles on the template and a uniform
    guess at the name); content first, it is learned in ~150 steps and kept after. Reading the city from the text
    search result comes later, between steps ~275 and ~325 of the content phase (from gold answers; with the
    teacher's mixed answers it was not learned in 300 steps). docs/results.md has the measurements.
    """

    traces: int = 1024
    content_steps: int = 400
    direct_share: float = 0.2
    misread_share: float = 0.45
    known_search_share: float = 0.5
    steps: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.5
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("direct_share", "misread_share", "known_search_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"WarmStartConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if min(self.traces, self.steps, self.batch_size) < 1 or self.content_steps < 0:
            raise ValueError(
                f"WarmStartConfig: traces, steps and batch_size must be >= 1 and content_steps >= 0; got traces "
                f"{self.traces}, steps {self.steps}, batch_size {self.batch_size}, content_steps {self.content_steps}"
            )


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


async def _scripted_responses(
    executor, rows: list[dict], gold_turns: list[list[str]], processor, sampling_params, max_len
):
    tokenizer = getattr(processor, "tokenizer", processor)

    async def one(row, turns):
        engine = ScriptedEngine(tokenizer, turns)
        return await executor.execute(
            row["prompt"], row["label"], sampling_params.clone(), max_len, processor, engine, images=row.get("images")
        )

    return await asyncio.gather(*(one(row, turns) for row, turns in zip(rows, gold_turns, strict=True)))


def scripted_traces(executor, rows: list[dict], turns: list[list[str]], processor, sampling_params, max_len: int):
    """Agent-executor responses for `rows` (prompt rows) whose assistant turns are `turns`."""
    return asyncio.run(_scripted_responses(executor, rows, turns, processor, sampling_params, max_len))


def sft_step_loss(actor: Actor, batch: Experience, loss_fn: SFTLoss) -> torch.Tensor:
    mm = (
        merge_mm_train_inputs(batch.mm_train_inputs, "cpu")
        if any(m is not None for m in batch.mm_train_inputs)
        else {}
    )
    log_probs = actor(batch.sequences, batch.action_mask, attention_mask=batch.attention_mask, **mm)
    return loss_fn(log_probs, batch.action_mask)


def train_warm_start(
    actor: Actor,
    executor,
    rows: list[dict],
    questions,
    processor,
    sampling_params,
    max_len: int,
    config: WarmStartConfig,
    progress: Callable[[int, float], None] = lambda step, loss: None,
    held_out: tuple[list[dict], list] = ([], []),
) -> dict:
    """The whole warm start of the bundled task: teacher and gold traces of the first `config.traces` questions
    (`rows` are their prompt rows) and of every `held_out` question (rows, questions: the held-out splits' RECALL
    questions, `prepare.held_out_recall`, in the recall_cost preset) through the real agent, then `warm_start`.
    Returns the losses and the teacher's accuracy on its traces."""
    questions = list(questions)[: config.traces]
    rows = rows[: len(questions)] + list(held_out[0])
    questions += list(held_out[1])
    turns = teacher_turns(questions, config)
    traces = scripted_traces(executor, rows, turns, processor, sampling_params, max_len)
    gold_turns = [list(q.gold_actions) for q in questions]
    gold = (scripted_traces(executor, rows, gold_turns, processor, sampling_params, max_len), gold_turns)
    tokenizer = getattr(processor, "tokenizer", processor)
    losses = warm_start(actor, traces, gold, tokenizer, max_len, config, progress)
    teacher = sum(float(t["scores"] or 0.0) for t in traces) / len(traces)
    return {"losses": losses, "traces": len(traces), "teacher_accuracy": teacher}


def teacher_turns(questions, config: WarmStartConfig) -> list[list[str]]:
    """The weak teacher's assistant turns for each question (seeded by `config.seed`)."""
    rng = random.Random(config.seed)
    return [
        teacher_actions(q, rng, config.direct_share, config.misread_share, config.known_search_share)
        for q in questions
    ]


def content_spans(turn: str) -> list[tuple[int, int]]:
    """Character spans of what a turn says about its question: the string values of its call's arguments, or its
    answer. Everything else in a turn (tags, JSON keys, tool names) is the same in every trace."""
    answer = re.search(re.escape(protocol.ANSWER_OPEN) + "(.*?)" + re.escape(protocol.ANSWER_CLOSE), turn, re.S)
    if answer:
        return [answer.span(1)]
    spans = []
    for call in protocol.parse_tool_calls(turn):
        for value in (call.arguments or {}).values():
            if isinstance(value, str) and (at := turn.find(json.dumps(value))) >= 0:
                spans.append((at + 1, at + 1 + len(json.dumps(value)) - 2))
    return spans


def content_responses(responses: list[dict], turns: list[list[str]], tokenizer) -> list[dict]:
    """`responses` with their action ranges narrowed to the content tokens of their turns (`content_spans`).

    Turn k of a scripted trace is the tokenizer's encoding of `turns[k]` (`ScriptedEngine`), starting at
    `action_ranges[k][0]`, so a character span maps to tokens through the encoding's offsets."""
    out = []
    for response, trace in zip(responses, turns, strict=True):
        ranges = []
        for (start, _), turn in zip(response["action_ranges"], trace, strict=False):
            offsets = tokenizer(turn, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            for a, b in content_spans(turn):
                hit = [i for i, (x, y) in enumerate(offsets) if x < b and y > a]
                if hit:
                    ranges.append((start + hit[0], start + hit[-1] + 1))
        out.append({**response, "action_ranges": ranges or response["action_ranges"]})
    return out


def warm_start(
    actor: Actor,
    responses: list[dict],
    gold: tuple[list[dict], list[list[str]]],
    tokenizer,
    max_len: int,
    config: WarmStartConfig,
    progress: Callable[[int, float], None] = lambda step, loss: None,
) -> list[float]:
    """Train `actor` in place for `config.steps` AdamW steps: the content tokens of the `gold` traces (responses,
    their assistant turns) for the first `config.content_steps`, then every assistant token of the teacher's
    `responses`. Batches are drawn by epochs of shuffled traces. Returns the loss of every step; `progress(step,
    loss)` is called after each step."""
    pad_token_id = tokenizer.pad_token_id
    experiences = responses_to_experiences(responses, max_len)
    content = responses_to_experiences(content_responses(*gold, tokenizer), max_len)
    optimizer = torch.optim.AdamW(
        [p for p in actor.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = get_scheduler(
        "cosine_with_min_lr",
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=config.steps,
        scheduler_specific_kwargs={"min_lr_rate": config.min_lr_ratio},
    )
    loss_fn = SFTLoss()
    rng = random.Random(config.seed)
    losses: list[float] = []
    order: list[int] = []
    actor.train()
    for step in range(config.steps):
        pool = content if step < config.content_steps else experiences
        if step == config.content_steps:
            order = []
        batch_ids = []
        while len(batch_ids) < min(config.batch_size, len(pool)):
            if not order:
                order = list(range(len(pool)))
                rng.shuffle(order)
            batch_ids.append(order.pop())
        batch = Experience.concat_experiences([pool[j] for j in batch_ids], pad_token_id)
        loss = sft_step_loss(actor, batch, loss_fn)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress(step + 1, losses[-1])
    actor.eval()
    return losses
