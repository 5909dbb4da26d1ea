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

The recall_cost preset (task/prepare.py `RecallCostConfig`) adds two gates, for the regime where GRPO can suppress
a useful tool; both must pass before a GRPO-vs-TAPO comparison on it means anything:
- `recall_share` (in gates.json with the others): on the eval split's RECALL questions, of the answers given without
  any tool call, the share that are right (`recall_share`). Floor 0.5: the warm start knows the cities it was taught,
  so a direct answer is a choice, not a guess. 0 when no recall question was answered directly.
- `collapse` (collapse_gate.json, from the per-step metrics of >= 3 GRPO runs: `collapse_gate`): on the NEEDS_TOOL
  training questions the tool-call rate falls by at least 0.15 within the first 10 RL steps, while calling would
  score higher there than the policy does. Per run, the drop is the warm start's rate (measured on training
  questions at T = 1 with the gates; else the run's step-1 rollout, which the warm start samples) minus the rate
  pooled over the last 3 steps up to step 10: one step's rate rests on ~30 trajectories (standard error ~0.09), so
  the lowest of 10 steps would pass on noise. "Calling scores higher" is the calling advantage, pooled over the same
  last steps: the mean reward of the trajectories that called minus the mean reward of all of them (the policy's
  score), on needs_tool questions. The reward is what GRPO maximises (it charges the search penalty), so a positive
  advantage says the policy would gain by calling on every such question: the tool it drops is useful. The gate
  passes when the mean drop over seeds is >= 0.15 and the mean calling advantage is > 0, with >= 3 seeds measured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from openrlhf_tapo.agent import protocol
from openrlhf_tapo.algorithms.tapo import TAPOConfig, correctable_rate
from openrlhf_tapo.task.questions import NEEDS_TOOL, RECALL

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
    "recall_share": (0.5, None),  # recall_cost preset only
}
# the collapse gate (recall_cost preset): the smallest mean drop of the needs_tool call rate, within how many RL
# steps, pooled over how many last steps, over at least how many GRPO seeds (module docstring)
COLLAPSE_MIN_DROP, COLLAPSE_WITHIN, COLLAPSE_WINDOW, COLLAPSE_SEEDS = 0.15, 10, 3, 3


def well_formed_rate(responses: Sequence[dict]) -> float:
    """1 - (format errors / call attempts) over `responses` (agent-executor responses); 0 with no attempt."""
    attempts = sum(r["extra_logs"]["tool_calls"] for r in responses)
    broken = sum(r["extra_logs"][f"errors/{kind}"] for r in responses for kind in FORMAT_ERRORS)
    return 1.0 - broken / attempts if attempts else 0.0


def recall_share(responses: Sequence[dict]) -> dict:
    """Of the RECALL trajectories (`datasource`) that answered without any tool-call attempt, the share that are
    right (score 1): {"recall_share", "direct_answers", "recall_trajectories"}; the share is 0 when none did."""
    recall = [r for r in responses if r.get("datasource") == RECALL]
    direct = [r for r in recall if r["extra_logs"]["tool_calls"] == 0]
    right = sum(float(r["scores"] or 0.0) >= 1.0 for r in direct)
    return {
        "recall_share": right / len(direct) if direct else 0.0,
        "direct_answers": len(direct),
        "recall_trajectories": len(recall),
    }


def _pooled(values: Sequence[float], weights: Sequence[float]) -> float | None:
    """The weighted mean of `values`; None when the weights sum to 0."""
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total if total else None


def collapse_run(
    metrics: Sequence[dict],
    start_rate: float | None = None,
    kind: str = NEEDS_TOOL,
    within: int = COLLAPSE_WITHIN,
    window: int = COLLAPSE_WINDOW,
) -> dict:
    """One GRPO run's side of the collapse gate, from its per-step records (metrics.jsonl: `step` and the loop's
    `kind/<kind>/{trajectories,tool_call_rate,reward,reward_called}`): the call rate at the start (`start_rate`, else
    the run's step-1 rate), at the end (pooled over the last `window` steps up to step `within` that drew the kind),
    their difference `drop`, and the `calling_advantage` over the same end steps (module docstring). Values that
    cannot be measured (no step drew the kind; no call at the end) are None."""
    p = f"kind/{kind}/"
    steps = [m for m in metrics if m["step"] <= within and m.get(p + "trajectories", 0) > 0]
    step1 = next((m[p + "tool_call_rate"] for m in steps if m["step"] == 1), None)
    start = start_rate if start_rate is not None else step1
    end = steps[-window:]
    trajectories = [m[p + "trajectories"] for m in end]
    rates = [m[p + "tool_call_rate"] for m in end]
    called = [n * rate for n, rate in zip(trajectories, rates, strict=True)]
    end_rate, reward = _pooled(rates, trajectories), _pooled([m[p + "reward"] for m in end], trajectories)
    reward_called = _pooled([m.get(p + "reward_called", 0.0) for m in end], called)  # absent in a step with no call
    return {
        "start_rate": start,
        "step1_rate": step1,
        "end_rate": end_rate,
        "end_steps": [m["step"] for m in end],
        "drop": start - end_rate if start is not None and end_rate is not None else None,
        "reward": reward,
        "reward_called": reward_called,
        "calling_advantage": reward_called - reward if reward_called is not None and reward is not None else None,
        "rate_per_step": {m["step"]: m[p + "tool_call_rate"] for m in steps},
    }


def collapse_gate(
    runs: Mapping[int, Sequence[dict]],
    start_rate: float | None = None,
    kind: str = NEEDS_TOOL,
    within: int = COLLAPSE_WITHIN,
    window: int = COLLAPSE_WINDOW,
    min_drop: float = COLLAPSE_MIN_DROP,
    min_seeds: int = COLLAPSE_SEEDS,
) -> dict:
    """The collapse gate over GRPO runs (`runs`: seed -> per-step records), each measured by `collapse_run`: passes
    when >= `min_seeds` runs were measured, their mean drop is >= `min_drop` and their mean calling advantage is
    > 0. Returns `check`'s fields ("value" = the mean drop, NaN when none was measured; "range"; "passed"), the
    reasons it failed, the mean calling advantage, every seed's measures and the settings."""
    seeds = {seed: collapse_run(metrics, start_rate, kind, within, window) for seed, metrics in sorted(runs.items())}
    drops = [s["drop"] for s in seeds.values() if s["drop"] is not None]
    advantages = [s["calling_advantage"] for s in seeds.values() if s["calling_advantage"] is not None]
    mean_drop = sum(drops) / len(drops) if drops else None
    advantage = sum(advantages) / len(advantages) if advantages else None
    failed = []
    if len(drops) < min_seeds:
        failed.append(f"{len(drops)} run(s) measured; the gate needs >= {min_seeds} GRPO seeds")
    if mean_drop is None or mean_drop < min_drop:
        drop = "not measured" if mean_drop is None else f"{mean_drop:.3f}"
        failed.append(f"the mean drop of the {kind} call rate ({drop}) is not >= {min_drop}")
    if advantage is None or advantage <= 0:
        value = "not measured: no call at the end" if advantage is None else f"{advantage:.3f}"
        failed.append(f"the calling advantage ({value}) is not > 0: calling would not score higher than the policy")
    return {
        "value": mean_drop if mean_drop is not None else float("nan"),
        "range": [min_drop, None],
        "passed": not failed,
        "failed_because": failed,
        "drops": drops,
        "calling_advantage": advantage,
        "seeds": seeds,
        "start_rate": start_rate,
        "kind": kind,
        "within": within,
        "window": window,
        "min_seeds": min_seeds,
    }


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
    from openrlhf_tapo.adapter.inprocess.agent_rollouts import by_kind, evaluate

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
    kinds = {}  # a task of several question kinds (the recall_cost preset): each kind's eval and training summary
    if by_kind(responses):
        recall = recall_share(responses)
        kinds = {"eval_by_kind": by_kind(responses), "train_by_kind": by_kind(groups), "recall": recall}
        values["recall_share"] = recall["recall_share"]
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
        **kinds,
    }
