"""The gates a warm start must pass before a GRPO-vs-TAPO comparison on the bundled task means anything.

Each gate is measured on rollouts of the real agent (our executor, the local index) and printed, and written to
`summary.json`, before any comparison:

- `well_formed_calls`: share of tool-call attempts at temperature 1 that parse and execute (no JSON, tag, name or
  argument error). Floor 0.9: a policy whose calls break cannot show what good calls are worth.
- The counterfactual checks. Questions are re-run against a base whose home cities are permuted
  (`KnowledgeBase.permuted`: the permuted city is never the original nor the news city), on the same sampling
  seeds; every answer is counted, and the number of answers is recorded:
  - `follows_tools_heldout`: share of ALL answers on the held-out eval entities that name the permuted city (what
    the tools now say). Floor 0.2, the `sampled_accuracy` floor: success must come from the tools.
  - `follows_tools_train`: the same on TRAINING entities, the only ones whose facts a policy could have memorised
    (the warm start and RL see them). Floor 0.2: a policy that answers training questions from memory names the
    original city there and fails.
  - `tool_following_train`: on the training entities, of the answers naming the permuted or the original city,
    the share naming the permuted one. Floor 0.8: where memory could win, it does not.
  - `tool_following` (not gated; kept for continuity with the records before 2026-12-06): the same ratio on the
    held-out entities. There no fact can be memorised, so the "original city" answers are guesses at chance level
    and the ratio fails only when fewer than ~7 % of all answers follow the tools (docs/results.md §3).
  A rule-based memoriser fails all three gates and a reader passes them (tests/test_counterfactual.py).
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
    "follows_tools_heldout": (0.2, None),
    "follows_tools_train": (0.2, None),
    "tool_following_train": (0.8, None),
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
    """How `answers` on the permuted base split between the tools' fact and the memorised one: the share of all
    answers naming each, the ratio follow / (follow + recall) (0 when neither is named), and the number of answers."""
    follow = sum(a == t for a, t in zip(answers, tool_facts, strict=True))
    recall = sum(a == m for a, m in zip(answers, memory_facts, strict=True))
    n = len(answers)
    return {
        "tool_following": follow / (follow + recall) if follow + recall else 0.0,
        "answers_tool_fact": follow / n if n else 0.0,
        "answers_memorised_fact": recall / n if n else 0.0,
        "answers": n,
    }


@dataclasses.dataclass
class CounterfactualRows:
    """Questions to ask on the permuted base: prompt rows with each row's answer on the original base (what a
    memorised fact says) and on the permuted base (what the tools say there)."""

    rows: list[dict]
    original: list[str]
    permuted: list[str]

    def __post_init__(self) -> None:
        if not len(self.rows) == len(self.original) == len(self.permuted):
            raise ValueError(
                f"CounterfactualRows: {len(self.rows)} rows, {len(self.original)} original and "
                f"{len(self.permuted)} permuted answers; give one answer of each per row"
            )


def counterfactual_rows(task_root, task_config, split: str, rows: list[dict]) -> CounterfactualRows:
    """The first `len(rows)` questions of `split` of the task at `task_root` (`rows` are that split's prompt rows,
    in order) with their original and permuted answers."""
    from openrlhf_tapo.task.prepare import counterfactual_answers, task_paths
    from openrlhf_tapo.task.questions import read_questions

    questions = read_questions(task_paths(task_root).questions[split])[: len(rows)]
    permuted = counterfactual_answers(task_root, task_config, split)[: len(rows)]
    return CounterfactualRows(rows, [q.answer for q in questions], permuted)


def counterfactual_values(heldout: dict, train: dict) -> dict[str, float]:
    """The counterfactual gate values from `tool_following` of the held-out and of the training answers."""
    return {
        "follows_tools_heldout": heldout["answers_tool_fact"],
        "follows_tools_train": train["answers_tool_fact"],
        "tool_following_train": train["tool_following"],
    }


def question_scores(responses: Sequence[dict], samples: int) -> list[float]:
    """Mean score per question of rollouts in rollout order (`samples` consecutive trajectories per question): the
    unit of a paired before/after comparison on the same questions and sampling seeds."""
    scores = [float(r["scores"] or 0.0) for r in responses]
    return [sum(scores[i : i + samples]) / samples for i in range(0, len(scores), samples)]


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
    heldout: CounterfactualRows,
    trained: CounterfactualRows,
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
    the task's agent (`executor`); `samples` per row of `heldout` (the eval questions) and of `trained` (training
    questions) with the agent on the permuted base (`counterfactual_executor`); GRPO groups of `group_size` over
    `train_rows`. Every set starts at sampling seed `seed`, so the eval rollouts are those of an evaluation with
    the same seed (the paired "before" of a before/after comparison).

    Returns {"values": gate values, "checked": `check(values)`, details, "eval_question_scores": mean score per
    eval row, "eval_responses": the eval rollouts}."""
    from openrlhf_tapo.adapter.inprocess.agent_rollouts import evaluate

    def sampled(ex, rows, n):
        return evaluate(ex, rows, processor, engine, args, max_len, 1.0, n, seed)

    def following(cf: CounterfactualRows) -> dict:
        _, flipped = sampled(counterfactual_executor, cf.rows, samples)
        return tool_following(
            [final_answer(r, processor.tokenizer) for r in flipped],
            [a for a in cf.permuted for _ in range(samples)],
            [a for a in cf.original for _ in range(samples)],
        )

    summary, responses = sampled(executor, eval_rows, samples)
    following_heldout, following_train = following(heldout), following(trained)
    _, groups = sampled(executor, train_rows, group_size)
    correctable = grpo_correctable(groups, group_size)
    values = {
        "well_formed_calls": well_formed_rate(responses),
        **counterfactual_values(following_heldout, following_train),
        "tool_following": following_heldout["tool_following"],  # not gated (module docstring)
        "sampled_accuracy": summary["accuracy"],
        "correctable": correctable["failing_traj_correctable_frac"],
    }
    return {
        "values": values,
        "checked": check(values),
        "eval_tool_call_rate": summary["tool_call_rate"],
        "tool_following": following_heldout,
        "tool_following_train": following_train,
        "correctable": correctable,
        "groups_accuracy": sum(float(r["scores"] or 0.0) for r in groups) / len(groups),
        "seed": seed,
        "eval_samples": samples,
        "eval_question_scores": question_scores(responses, samples),
        "eval_responses": responses,
    }
