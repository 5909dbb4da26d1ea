"""The gates a warm start must pass before a GRPO-vs-TAPO comparison on the bundled task means anything.

Each gate is measured on rollouts of the real agent (our executor, the local index) and printed, and written to
`summary.json`, before any comparison:

- `well_formed_calls`: share of tool-call attempts at temperature 1 that parse and execute (no JSON, tag, name or
  argument error). Floor 0.9: a policy whose calls break cannot show what good calls are worth.
- `tool_following`: the counterfactual check. The eval questions are re-run against a base whose home cities are
  permuted (`KnowledgeBase.permuted`); of the answers that name either the permuted city (what the tools now say)
  or the original one (what a memorised fact would say), the share that names the permuted city. Floor 0.8: the
  tools, not memory, decide success.
- `sampled_accuracy`: warm-start accuracy at temperature 1 on the eval split. Between 0.2 and 0.5: RL has room,
  and groups hold both successes and failures.
- `correctable`: share of failing trajectories of GRPO groups (temperature 1, training questions) that TAPO's own
  rule (`algorithms.tapo.correctable_rate`) finds correctable: a call with the same parameters made by a
  successful trajectory of the group. Floor 0.5, the paper's "over half". RL runs also log it every step
  (`tapo/failing_traj_correctable_frac`, computed with beta 0 in the GRPO arms).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from openrlhf_tapo.agent import protocol
from openrlhf_tapo.algorithms.tapo import TAPOConfig, correctable_rate

# Error kinds that mean the model wrote a broken call (not that a working call met a failing backend).
FORMAT_ERRORS = (protocol.BAD_JSON, protocol.BAD_CALL, protocol.UNCLOSED, "unknown_tool", "bad_arguments", "image_ref")

# gate -> (lowest passing value, highest passing value or None)
GATES: dict[str, tuple[float, float | None]] = {
    "well_formed_calls": (0.9, None),
    "tool_following": (0.8, None),
    "sampled_accuracy": (0.2, 0.5),
    "correctable": (0.5, None),
}


def well_formed_rate(responses: Sequence[dict]) -> float:
    """1 - (format errors / call attempts) over `responses` (agent-executor responses); 0 with no attempt."""
    attempts = sum(r["extra_logs"]["tool_calls"] for r in responses)
    broken = sum(r["extra_logs"][f"errors/{kind}"] for r in responses for kind in FORMAT_ERRORS)
    return 1.0 - broken / attempts if attempts else 0.0


def final_answer(response: dict, tokenizer) -> str | None:
    """The answer of a trajectory: `<answer>` of its last assistant turn (None when it gave none)."""
    if not response["action_ranges"]:
        return None
    start, end = response["action_ranges"][-1]
    return protocol.parse_answer(tokenizer.decode(response["observation_tokens"][start:end]))


def tool_following(answers: Sequence[str | None], tool_facts: Sequence[str], memory_facts: Sequence[str]) -> dict:
    """Of the answers naming the tools' fact or the memorised one, the share naming the tools' fact."""
    follow = sum(a == t for a, t in zip(answers, tool_facts, strict=True))
    recall = sum(a == m for a, m in zip(answers, memory_facts, strict=True))
    n = len(answers)
    return {
        "tool_following": follow / (follow + recall) if follow + recall else 0.0,
        "answers_tool_fact": follow / n if n else 0.0,
        "answers_memorised_fact": recall / n if n else 0.0,
    }


def grpo_correctable(responses: Sequence[dict], group_size: int, config: TAPOConfig | None = None) -> dict:
    """TAPO's correctable rate over `responses` in rollout order (groups of `group_size` consecutive trajectories),
    success = score 1, the calls the executor recorded."""
    calls = [dataclasses.replace(c, traj=i) for i, r in enumerate(responses) for c in r["tool_calls"]]
    success = [float(r["scores"] or 0.0) >= 1.0 for r in responses]
    groups = [i // group_size for i in range(len(responses))]
    return correctable_rate(groups, success, calls, config)


def check(values: dict[str, float]) -> dict[str, dict]:
    """{gate: {"value", "range", "passed"}} for the gates present in `values`."""
    out = {}
    for name, (low, high) in GATES.items():
        if name in values:
            v = values[name]
            out[name] = {"value": v, "range": [low, high], "passed": v >= low and (high is None or v <= high)}
    return out


def format_gates(checked: dict[str, dict]) -> list[str]:
    """One line per gate: name, value, required range, PASS/FAIL."""
    lines = []
    for name, g in checked.items():
        low, high = g["range"]
        need = f">= {low}" if high is None else f"{low}-{high}"
        lines.append(f"  {name:<20} {g['value']:.3f}  (needs {need})  {'PASS' if g['passed'] else 'FAIL'}")
    return lines


def measure(
    executor,
    counterfactual_executor,
    eval_rows: list[dict],
    answers: Sequence[str],
    counterfactual_answers: Sequence[str],
    train_rows: list[dict],
    group_size: int,
    samples: int,
    processor,
    engine,
    args,
    max_len: int,
    seed: int,
) -> dict:
    """Every gate of a policy (its `engine`), from temperature-1 rollouts on fixed seeds: `samples` per eval row with
    the task's agent (`executor`) and with the agent on the permuted base (`counterfactual_executor`; the same
    seeds, so both ask with the same random numbers), and GRPO groups of `group_size` over `train_rows`.

    `answers` / `counterfactual_answers`: each eval row's answer on the original and on the permuted base.
    Returns {"values": gate values, "checked": `check(values)`, details, "eval_responses": the eval rollouts}."""
    from openrlhf_tapo.adapter.inprocess_rollout import evaluate

    def sampled(ex, rows, n):
        return evaluate(ex, rows, processor, engine, args, max_len, 1.0, n, seed)

    summary, responses = sampled(executor, eval_rows, samples)
    _, flipped = sampled(counterfactual_executor, eval_rows, samples)
    following = tool_following(
        [final_answer(r, processor.tokenizer) for r in flipped],
        [a for a in counterfactual_answers for _ in range(samples)],
        [a for a in answers for _ in range(samples)],
    )
    _, groups = sampled(executor, train_rows, group_size)
    correctable = grpo_correctable(groups, group_size)
    values = {
        "well_formed_calls": well_formed_rate(responses),
        "tool_following": following["tool_following"],
        "sampled_accuracy": summary["accuracy"],
        "correctable": correctable["failing_traj_correctable_frac"],
    }
    return {
        "values": values,
        "checked": check(values),
        "eval_tool_call_rate": summary["tool_call_rate"],
        "tool_following": following,
        "correctable": correctable,
        "groups_accuracy": sum(float(r["scores"] or 0.0) for r in groups) / len(groups),
        "eval_responses": responses,
    }
