"""Per-sample evaluation records and their summary (accuracy by metric, tool use, turns, errors, cache hits)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass
class EvalRecord:
    """What one benchmark sample gave, written as one jsonl line."""

    id: str
    split: str
    question: str
    answers: list[str]
    prediction: str | None  # text inside <answer>, None when the agent never answered
    scores: dict[str, float]  # metric -> 0-1 (see evaluator.SCORE_METRICS); a metric missing here does not apply
    reward: float  # the training reward of this trajectory
    turns: int  # assistant turns
    tool_calls: dict[str, int] = field(default_factory=dict)  # tool name -> calls naming a known tool
    tool_errors: dict[str, int] = field(default_factory=dict)  # error kind -> failed calls / turns
    attempted_calls: int = 0  # every <tool_call> the model wrote, malformed ones included
    cache_hits: int = 0
    error: str | None = None  # the sample itself failed (engine or agent exception); counted, never dropped
    failure: str | None = None  # a failing trajectory's first error (agent/failures.py), None for a success
    response: str = ""
    elapsed_s: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def _rate(num: float, den: float) -> float:
    return num / den if den else 0.0


def _accuracy(records: Sequence[EvalRecord], metrics: list[str]) -> dict[str, float]:
    out = {}
    for m in metrics:
        values = [r.scores[m] for r in records if m in r.scores]
        out[m] = _rate(sum(values), len(values))
    return out


def summarize_records(records: Sequence[EvalRecord]) -> dict:
    """Aggregate records. A metric's accuracy is its mean over the samples it applies to (failed samples carry 0 for
    every metric, so they count as wrong, never as missing); every other rate is over all samples."""
    n = len(records)
    metrics = sorted({m for r in records for m in r.scores})
    accuracy = _accuracy(records, metrics)
    by_split: dict[str, dict[str, float]] = {}
    for split in sorted({r.split for r in records if r.split}):
        rows = [r for r in records if r.split == split]
        by_split[split] = {"n": len(rows), **_accuracy(rows, metrics)}
    calls = Counter()
    errors = Counter()
    for r in records:
        calls.update(r.tool_calls)
        errors.update(r.tool_errors)
    total_calls = sum(calls.values())
    attempts = sum(max(r.attempted_calls, sum(r.tool_calls.values())) for r in records)
    cache_hits = sum(r.cache_hits for r in records)
    return {
        "n": n,
        "accuracy": accuracy,
        "accuracy_by_split": by_split,
        "reward_mean": _rate(sum(r.reward for r in records), n),
        "answered_rate": _rate(sum(r.prediction is not None for r in records), n),
        "turns_mean": _rate(sum(r.turns for r in records), n),
        "tool_call_attempt_rate": _rate(sum(r.attempted_calls > 0 for r in records), n),
        "tool_call_rate": _rate(sum(bool(sum(r.tool_calls.values())) for r in records), n),
        "tool_call_attempts_per_sample": _rate(attempts, n),
        "tool_calls_per_sample": _rate(total_calls, n),
        "tool_calls": {name: {"total": c, "per_sample": _rate(c, n)} for name, c in sorted(calls.items())},
        "tool_errors": dict(sorted(errors.items())),
        "failed_samples": sum(r.error is not None for r in records),
        "cache_hits": cache_hits,
        "cache_hit_rate": _rate(cache_hits, total_calls),
        # share of ALL samples whose first error is each kind: which step a credit estimator must reach
        "failures": {
            kind: _rate(c, n) for kind, c in sorted(Counter(r.failure for r in records if r.failure).items())
        },
    }


def summary_markdown(summary: dict, title: str = "Evaluation") -> str:
    """The summary as markdown tables."""
    lines = [f"# {title}", "", "| measure | value |", "|---|---|", f"| samples | {summary['n']} |"]
    for metric, acc in summary["accuracy"].items():
        lines.append(f"| accuracy ({metric}) | {acc:.4f} |")
    lines += [
        f"| mean reward | {summary['reward_mean']:.4f} |",
        f"| answered | {summary['answered_rate']:.4f} |",
        f"| assistant turns / sample | {summary['turns_mean']:.3f} |",
        f"| samples that tried a tool call | {summary['tool_call_attempt_rate']:.4f} |",
        f"| samples with a call to a known tool | {summary['tool_call_rate']:.4f} |",
        f"| tool-call attempts / sample (malformed included) | {summary['tool_call_attempts_per_sample']:.3f} |",
        f"| calls to known tools / sample | {summary['tool_calls_per_sample']:.3f} |",
    ]
    for name, c in summary["tool_calls"].items():
        lines.append(f"| `{name}` calls | {c['total']} ({c['per_sample']:.3f} / sample) |")
    for kind, c in summary["tool_errors"].items():
        lines.append(f"| error `{kind}` | {c} |")
    lines += [
        f"| cache hits | {summary['cache_hits']} ({summary['cache_hit_rate']:.4f} of calls) |",
        f"| failed samples | {summary['failed_samples']} |",
    ]
    for kind, share in summary.get("failures", {}).items():
        lines.append(f"| first error `{kind}` (share of samples) | {share:.4f} |")
    if summary["accuracy_by_split"]:
        metrics = list(summary["accuracy"])
        lines += ["", "| split | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
        for split, row in summary["accuracy_by_split"].items():
            lines.append(f"| {split} | {row['n']} | " + " | ".join(f"{row.get(m, 0.0):.4f}" for m in metrics) + " |")
    return "\n".join(lines) + "\n"
