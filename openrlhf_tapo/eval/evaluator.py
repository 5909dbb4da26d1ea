"""Run benchmark samples through the training agent (same executor, tools and reward) and score them.

Scores per sample (`EvalRecord.scores`, each 0-1):

- `exact_match`, `substring_match`, `f1`: the reward's rule-based matches (SQuAD normalisation, candidates count);
- `score`: the correctness the training reward used (the rule in `reward.match`, or the judge's verdict);
- `judge`: the LLM judge's verdict, for judged benchmarks (SimpleVQA) — only where the judge gave one;
- `infoseek`: InfoSeek's rule for numeric questions: exact match, or the answer's number inside an accepted range
  (only on samples that carry ranges).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from openrlhf_tapo.agent import protocol
from openrlhf_tapo.agent.executor import AgentExecutor
from openrlhf_tapo.eval.benchmarks import EvalSample
from openrlhf_tapo.eval.summary import EvalRecord

BASE_METRICS = ("exact_match", "substring_match", "f1", "score")
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


@dataclass
class EvalConfig:
    """Decoding and size of one evaluation run.

    temperature: 0 = greedy (the default for benchmark numbers). max_length: prompt + all turns, in tokens (as
    `--data.max_len` + `--rollout.max_new_tokens` bound it in training). concurrency: trajectories in flight (their
    tool calls overlap; the CPU engine still generates one at a time). seed: sampling seed of sample i is seed + i.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_length: int = 4096
    concurrency: int = 8
    seed: int = 0

    def validate(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.max_length < 16 or self.concurrency < 1:
            raise ValueError(
                f"max_length must be >= 16 and concurrency >= 1, got {self.max_length}, {self.concurrency}"
            )


def in_range(prediction: str | None, ranges: Sequence[tuple[float, float]]) -> bool:
    """Whether the first number in the prediction lies in one of the accepted [lo, hi] ranges (InfoSeek)."""
    if prediction is None:
        return False
    match = _NUMBER.search(prediction)
    if match is None:
        return False
    value = float(match.group().replace(",", ""))
    return any(lo <= value <= hi for lo, hi in ranges)


def _prediction(response: dict, tokenizer) -> tuple[str | None, str]:
    """(answer text, the assistant turns decoded) of an executor response."""
    tokens = response["observation_tokens"]
    turns = [tokenizer.decode(tokens[s:e], skip_special_tokens=False) for s, e in response["action_ranges"]]
    answer = protocol.parse_answer(turns[-1]) if turns else None
    return answer, "\n".join(turns)


def record_from_response(sample: EvalSample, response: dict, tokenizer, elapsed: float) -> EvalRecord:
    logs = response["extra_logs"]
    prediction, text = _prediction(response, tokenizer)
    scores = {
        "exact_match": float(logs["exact_match"]),
        "substring_match": float(logs["substring_match"]),
        "f1": float(logs["f1"]),
        "score": float(response["scores"]),
    }
    if sample.judge and logs.get("judged"):
        scores["judge"] = float(response["scores"])
    if sample.ranges:
        scores["infoseek"] = float(scores["exact_match"] > 0 or in_range(prediction, sample.ranges))
    return EvalRecord(
        id=sample.id,
        split=sample.split,
        question=sample.question,
        answers=sample.answers,
        prediction=prediction,
        scores=scores,
        reward=float(response["reward"]),
        turns=int(logs["turns"]),
        tool_calls={k.removeprefix("calls/"): int(v) for k, v in logs.items() if k.startswith("calls/") and v},
        tool_errors={k.removeprefix("errors/"): int(v) for k, v in logs.items() if k.startswith("errors/") and v},
        cache_hits=int(logs.get("cache_hits", 0)),
        attempted_calls=int(logs.get("tool_calls", 0)),
        failure=next((k.removeprefix("failure/") for k, v in logs.items() if k.startswith("failure/") and v), None),
        response=text,
        elapsed_s=round(elapsed, 3),
    )


def failed_record(sample: EvalSample, error: BaseException, elapsed: float) -> EvalRecord:
    return EvalRecord(
        id=sample.id,
        split=sample.split,
        question=sample.question,
        answers=sample.answers,
        prediction=None,
        scores=dict.fromkeys(BASE_METRICS, 0.0),
        reward=0.0,
        turns=0,
        error=f"{type(error).__name__}: {error}",
        elapsed_s=round(elapsed, 3),
    )


def sampling_params(config: EvalConfig, index: int):
    """OpenRLHF-style sampling params (vLLM's class; the CPU stub keeps the same fields)."""
    from vllm import SamplingParams

    kwargs = dict(temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_length)
    if config.temperature > 0:
        kwargs["seed"] = config.seed + index
    return SamplingParams(**kwargs)


async def evaluate(
    samples: Sequence[EvalSample],
    executor: AgentExecutor,
    engine,
    processor,
    config: EvalConfig,
    on_record: Callable[[int, EvalRecord], None] | None = None,
) -> list[EvalRecord]:
    """Evaluate every sample (in flight: `config.concurrency`); records come back in sample order.

    A sample whose rollout raises (engine failure, a prompt longer than max_length) is recorded with its error and
    scored 0; the others go on. `on_record(i, record)` is called as each finishes (progress, streaming to disk).
    """
    config.validate()
    tokenizer = getattr(processor, "tokenizer", processor)
    gate = asyncio.Semaphore(config.concurrency)
    records: list[EvalRecord | None] = [None] * len(samples)

    async def one(i: int, sample: EvalSample) -> None:
        async with gate:
            t0 = time.perf_counter()
            try:
                response = await executor.execute(
                    prompt=sample.question,
                    label=sample.label,
                    sampling_params=sampling_params(config, i),
                    max_length=config.max_length,
                    hf_tokenizer=processor,
                    llm_engine=engine,
                    images=list(sample.images) or None,
                )
                record = record_from_response(sample, response, tokenizer, time.perf_counter() - t0)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                record = failed_record(sample, err, time.perf_counter() - t0)
        records[i] = record
        if on_record is not None:
            on_record(i, record)

    await asyncio.gather(*(one(i, s) for i, s in enumerate(samples)))
    return [r for r in records if r is not None]
