"""Summary of a demo run: accuracy before/after RL on the eval split, tool use, the failure taxonomy, TAPO
diagnostics, and plots (PNG).

Inputs are what the run wrote or returned: the eval responses before and after RL (agent-executor dicts), and the
per-step metrics (`metrics.jsonl`, OpenRLHF's status keys: `rollout/reward_mean`, `policy_loss`, the agent's
`extra_logs` under `agent/`, the TAPO stage's `tapo/*`).
"""

from __future__ import annotations

import json
from pathlib import Path

from openrlhf_tapo.agent.failures import FAILURE_KINDS

TAPO_KEYS = (
    "tapo/failing_traj_correctable_frac",
    "tapo/failing_calls_correctable_frac",
    "tapo/failing_traj_corrected_frac",
    "tapo/corrected_calls",
    "tapo/corrected_tokens",
    "tapo/mean_advantage_change",
)


def accuracy(responses: list[dict]) -> float:
    """Mean score (1 = correct) of agent-executor responses."""
    return sum(float(r["scores"] or 0.0) for r in responses) / max(1, len(responses))


def _tool_rate(responses: list[dict]) -> float:
    return sum(r["extra_logs"]["tool_calls"] > 0 for r in responses) / max(1, len(responses))


def failure_shares(responses: list[dict]) -> dict[str, float]:
    """Share of the responses whose first error is each kind (agent/failures.py; a success has none): which step a
    credit estimator would have to reach (docs/step_credit.md)."""
    count = max(1, len(responses))
    return {
        kind: sum(r["extra_logs"].get(f"failure/{kind}", 0.0) for r in responses) / count for kind in FAILURE_KINDS
    }


def _mean(metrics: list[dict], key: str) -> float:
    values = [m[key] for m in metrics if key in m]
    return sum(values) / len(values) if values else float("nan")


def summarize(before: dict[str, list[dict]], after: dict[str, list[dict]], metrics: list[dict]) -> dict:
    """`before` / `after`: eval responses by decoding mode ("sampled", "greedy"); tool use is read from the first,
    and so is the split by question kind (`eval_by_kind_before/after`: accuracy, tool-call rate, ... of each kind)
    of a task with several kinds (the recall_cost preset; absent for the default task)."""
    from openrlhf_tapo.adapter.inprocess.agent_rollouts import by_kind

    first_before, first_after = next(iter(before.values())), next(iter(after.values()))
    kinds = {}
    if by_kind(first_before):
        kinds = {"eval_by_kind_before": by_kind(first_before), "eval_by_kind_after": by_kind(first_after)}
    return {
        "eval_accuracy_before": {mode: accuracy(rs) for mode, rs in before.items()},
        "eval_accuracy_after": {mode: accuracy(rs) for mode, rs in after.items()},
        "eval_tool_call_rate_before": _tool_rate(first_before),
        "eval_tool_call_rate_after": _tool_rate(first_after),
        "eval_tool_calls_per_traj_before": _calls(first_before),
        "eval_tool_calls_per_traj_after": _calls(first_after),
        "eval_failures_before": failure_shares(first_before),
        "eval_failures_after": failure_shares(first_after),
        "train_steps": len(metrics),
        "train_reward_first": metrics[0]["rollout/reward_mean"] if metrics else float("nan"),
        "train_reward_last": metrics[-1]["rollout/reward_mean"] if metrics else float("nan"),
        "train_tool_calls_per_traj": _mean(metrics, "agent/tool_calls"),
        "tapo": {key: _mean(metrics, key) for key in TAPO_KEYS},
        "tapo_total_corrected_calls": sum(m.get("tapo/corrected_calls", 0.0) for m in metrics),
        **kinds,
    }


def paired_gains(before: dict[str, list[dict]], after: dict[str, list[dict]], questions: int) -> dict[str, dict]:
    """Per decoding mode: after - before on the same `questions` and sampling seeds, as the mean of the per-question
    paired differences with its 95 % t interval over the questions (the eval's own sampling error)."""
    from openrlhf_tapo.eval.stats import paired_ci
    from openrlhf_tapo.task.gates import question_scores

    gains = {}
    for mode, responses in before.items():
        samples = len(responses) // questions
        ci = paired_ci(question_scores(responses, samples), question_scores(after[mode], samples))
        gains[mode] = {"mean": ci.mean, "low": ci.low, "high": ci.high, "questions": questions, "samples": samples}
    return gains


def _calls(responses: list[dict]) -> float:
    return sum(r["extra_logs"]["tool_calls"] for r in responses) / max(1, len(responses))


def format_summary(summary: dict) -> str:
    from openrlhf_tapo.task.gates import format_gates

    before, after = summary["eval_accuracy_before"], summary["eval_accuracy_after"]
    lines = []
    if "gates" in summary:
        lines += ["gates (warm start, before RL)"] + format_gates(summary["gates"])
    gains = summary.get("eval_paired_gain", {})
    lines.append(
        f"eval accuracy ({summary['eval_questions']} held-out questions)    before -> after   change "
        "[95 % CI, paired by question and sampling seed]"
    )
    for mode in before:
        change = after.get(mode, float("nan")) - before[mode]
        ci = f" [{gains[mode]['low']:+.3f}, {gains[mode]['high']:+.3f}]" if mode in gains else ""
        lines.append(f"  {mode:<34} {before[mode]:.3f} -> {after.get(mode, float('nan')):.3f}   {change:+.3f}{ci}")
    lines.append(
        f"eval tool-call rate        {summary['eval_tool_call_rate_before']:.3f} -> "
        f"{summary['eval_tool_call_rate_after']:.3f} (calls/traj {summary['eval_tool_calls_per_traj_before']:.2f} -> "
        f"{summary['eval_tool_calls_per_traj_after']:.2f})"
    )
    for kind, was in summary.get("eval_by_kind_before", {}).items():
        now = summary["eval_by_kind_after"].get(kind, {})
        lines.append(
            f"  {kind + ' questions':<26} accuracy {was['accuracy']:.3f} -> {now.get('accuracy', float('nan')):.3f}, "
            f"tool-call rate {was['tool_call_rate']:.3f} -> {now.get('tool_call_rate', float('nan')):.3f}"
        )
    if "eval_failures_before" in summary:
        lines.append("eval failures by first error (share of the first mode's trajectories)   before -> after")
        for kind, share in summary["eval_failures_before"].items():
            lines.append(f"  {kind:<34} {share:.3f} -> {summary['eval_failures_after'].get(kind, float('nan')):.3f}")
    lines.append(
        f"train reward               step 1 {summary['train_reward_first']:.3f} -> step {summary['train_steps']} "
        f"{summary['train_reward_last']:.3f}"
    )
    lines.append("TAPO (mean over steps)")
    for key, value in summary["tapo"].items():
        lines.append(f"  {key:<40} {value:.3f}")
    lines.append(f"  total corrected calls                    {summary['tapo_total_corrected_calls']:.0f}")
    return "\n".join(lines)


def plot_run(run_dir: str | Path, summary: dict, metrics: list[dict]) -> list[Path]:
    """training.png (reward/accuracy, tool calls, TAPO, loss per step) and accuracy.png (eval before/after)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    steps = [m["step"] for m in metrics]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [
        (axes[0, 0], "reward and accuracy", [("rollout/reward_mean", "reward"), ("accuracy", "accuracy")]),
        (
            axes[0, 1],
            "tool use per trajectory",
            [("agent/tool_calls", "tool calls"), ("agent/format_ok", "format ok")],
        ),
        (
            axes[1, 0],
            "TAPO",
            [
                ("tapo/failing_traj_correctable_frac", "failing traj. correctable"),
                ("tapo/failing_traj_corrected_frac", "failing traj. corrected"),
                ("tapo/mean_advantage_change", "mean advantage change"),
            ],
        ),
        (axes[1, 1], "policy loss", [("policy_loss", "policy loss"), ("actor_grad_norm", "grad norm")]),
    ]
    for ax, title, series in panels:
        for key, label in series:
            values = [m.get(key, float("nan")) for m in metrics]
            ax.plot(steps, values, marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    training = run_dir / "training.png"
    fig.savefig(training, dpi=100)
    plt.close(fig)

    before, after = summary["eval_accuracy_before"], summary["eval_accuracy_after"]
    kinds = list(before)
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(kinds))
    ax.bar([x - 0.2 for x in xs], [before.get(k, 0.0) for k in kinds], width=0.4, label="before RL (warm start)")
    ax.bar([x + 0.2 for x in xs], [after.get(k, 0.0) for k in kinds], width=0.4, label="after RL")
    ax.set_xticks(list(xs), kinds)
    ax.set_ylabel("eval accuracy")
    ax.set_title(f"held-out eval accuracy ({summary['eval_questions']} questions)")
    ax.legend()
    fig.tight_layout()
    accuracy = run_dir / "accuracy.png"
    fig.savefig(accuracy, dpi=100)
    plt.close(fig)
    return [training, accuracy]


def write_report(
    run_dir: str | Path, before: dict[str, list[dict]], after: dict[str, list[dict]], metrics: list[dict], extra: dict
) -> dict:
    """summary.json + summary.txt + the plots under `run_dir`; returns the summary with the written paths.

    `before` / `after` are the eval responses by decoding mode (`summarize`)."""
    run_dir = Path(run_dir)
    summary = {**summarize(before, after, metrics), **extra}
    summary["eval_paired_gain"] = paired_gains(before, after, extra["eval_questions"])
    plots = plot_run(run_dir, summary, metrics) if metrics else []
    summary["plots"] = [str(p) for p in plots]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (run_dir / "summary.txt").write_text(format_summary(summary) + "\n")
    return summary
