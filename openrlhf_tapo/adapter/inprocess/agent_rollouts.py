"""Rollouts in one process: our `AgentExecutor` with OpenRLHF's sampling parameters, on any `generate` engine.

What OpenRLHF's `SamplesGenerator` does with the vLLM engines on a cluster, for an engine in this process
(`HFGenerationEngine` on the actor's own model, or the scripted engines of the tests and the warm start): the
rollout stage of the in-process loop (adapter/inprocess/loop.py), and the evaluations and gates of the bundled task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from unittest import mock

from openrlhf.trainer.ppo_utils import samples_generator
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator


def generate_kwargs(args) -> dict:
    """The generate kwargs OpenRLHF's `train()` (openrlhf/cli/train_ppo_ray.py) passes to its `PPOTrainer`."""
    return dict(
        do_sample=True,
        max_len=args.data.max_len,
        max_new_tokens=args.rollout.max_new_tokens,
        temperature=args.rollout.temperature,
        top_p=args.rollout.top_p,
    )


class _RecordingEngine:
    """One stand-in vLLM engine actor for `_dispatch_prompts_to_vllm`: no requests pending, records what it is sent."""

    def __init__(self):
        self.sent: list[dict] = []
        self.get_num_unfinished_requests = SimpleNamespace(remote=lambda: 0)
        self.generate_responses = SimpleNamespace(remote=lambda **request: self.sent.append(request))


def sampling_params(args, temperature: float | None = None):
    """The SamplingParams OpenRLHF's `SamplesGenerator._dispatch_prompts_to_vllm` builds from the rollout flags (log-
    probs under the IS correction), by calling it for one prompt with `generate_kwargs(args)` (`temperature`
    overrides the flag's, as OpenRLHF's evaluation does) on a recording engine; its `ray.get` of the engines'
    pending counts answers the counts themselves (a scoped stand-in, adapter/seam/patches.py's INPROCESS)."""
    kwargs = generate_kwargs(args)
    if temperature is not None:
        kwargs["temperature"] = temperature
    engine = _RecordingEngine()
    holder = SimpleNamespace(args=args, vllm_engines=[engine], tokenizer=None)
    with mock.patch.object(samples_generator, "ray", SimpleNamespace(get=lambda refs: refs)):
        SamplesGenerator._dispatch_prompts_to_vllm(holder, [""], [""], **kwargs)
    (request,) = engine.sent
    return request["sampling_params"]


def _with_seed(sp, seed: int | None):
    sp = sp.clone()
    if seed is not None:
        sp.seed = seed
    return sp


async def _rollouts(executor, rows, n: int, sp, max_len: int, processor, engine, seed) -> list[dict]:
    engines = engine if isinstance(engine, list) else [engine] * (len(rows) * n)
    tasks = [
        executor.execute(
            row["prompt"], row["label"], _with_seed(sp, None if seed is None else seed + i * n + j), max_len,
            processor, engines[i * n + j], images=row["images"],
        )
        for i, row in enumerate(rows)
        for j in range(n)
    ]  # fmt: skip
    responses = await asyncio.gather(*tasks)
    # each trajectory keeps its row's question kind, so summaries can split by kind (`by_kind`)
    return [{**r, "datasource": rows[k // n].get("datasource")} for k, r in enumerate(responses)]


def rollout(executor, rows, n, sp, max_len, processor, engine, seed: int | None = None) -> list[dict]:
    """`n` trajectories per row, in OpenRLHF's rollout order (a prompt's samples are consecutive).

    `engine` serves every trajectory, or is a list with one engine per trajectory (in rollout order). With `seed`,
    trajectory k samples with the per-request seed `seed + k` (vLLM's `SamplingParams.seed`), so the rollouts do
    not depend on the order in which concurrent requests reach the engine.
    """
    return asyncio.run(_rollouts(executor, rows, n, sp, max_len, processor, engine, seed))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def kind_summary(responses: Sequence[dict]) -> dict[str, float]:
    """Accuracy, reward and tool use of trajectories of one question kind: `trajectories`, `accuracy`, `reward`,
    `tool_call_rate` (share with >= 1 tool-call attempt); `reward_called` / `accuracy_called` over the trajectories
    that called (absent when none did) and `accuracy_direct` over those that did not (absent when all called)."""
    called = [r for r in responses if r["extra_logs"]["tool_calls"] > 0]
    direct = [r for r in responses if r["extra_logs"]["tool_calls"] == 0]
    out = {
        "trajectories": float(len(responses)),
        "accuracy": _mean([float(r["scores"] or 0.0) for r in responses]),
        "reward": _mean([float(r["reward"] or 0.0) for r in responses]),
        "tool_call_rate": len(called) / len(responses),
    }
    if called:
        out["reward_called"] = _mean([float(r["reward"] or 0.0) for r in called])
        out["accuracy_called"] = _mean([float(r["scores"] or 0.0) for r in called])
    if direct:
        out["accuracy_direct"] = _mean([float(r["scores"] or 0.0) for r in direct])
    return out


def by_kind(responses: Sequence[dict], kinds: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """`kind_summary` per question kind (the rows' `datasource`, which `rollout` keeps on each trajectory), for each
    of `kinds` the responses hold; `kinds` None: the responses' own kinds when there are two or more. A task of one
    kind (the default task's rows are all "city") gets {}, so its summaries keep the keys they always had."""
    if kinds is None:
        kinds = sorted({str(r.get("datasource")) for r in responses if r.get("datasource") is not None})
        if len(kinds) < 2:
            return {}
    groups = {kind: [r for r in responses if r.get("datasource") == kind] for kind in kinds}
    return {kind: kind_summary(group) for kind, group in groups.items() if group}


def summarize_responses(responses: list[dict], kinds: Sequence[str] | None = None) -> dict[str, float]:
    """Accuracy and tool use of a set of trajectories (means of the agent's `extra_logs` and scores), and the same
    per question kind as `kind/<kind>/<name>` (`by_kind(responses, kinds)`)."""
    if not responses:
        return {}
    keys = responses[0]["extra_logs"].keys()
    out = {f"agent/{k}": sum(r["extra_logs"][k] for r in responses) / len(responses) for k in keys}
    out["accuracy"] = sum(float(r["scores"] or 0.0) for r in responses) / len(responses)
    out["reward"] = sum(float(r["reward"] or 0.0) for r in responses) / len(responses)
    out["tool_call_rate"] = sum(r["extra_logs"]["tool_calls"] > 0 for r in responses) / len(responses)
    for kind, summary in by_kind(responses, kinds).items():
        out.update({f"kind/{kind}/{name}": value for name, value in summary.items()})
    return out


def evaluate(
    executor, rows, processor, engine, args, max_len: int, temperature: float = 0.0, samples: int = 1, seed=None
) -> tuple[dict[str, float], list[dict]]:
    """`samples` rollouts of every row at `temperature` (default: one greedy); returns the summary (split by question
    kind when the rows have several: `summarize_responses`) and the responses. With `seed` the sampling seeds are
    fixed (`rollout`), so policies compared on them draw the same random numbers."""
    sp = sampling_params(args, temperature=temperature)
    responses = rollout(executor, rows, samples, sp, max_len, processor, engine, seed=seed)
    return summarize_responses(responses), responses
