"""Aggregation of the CPU study: per-arm means with 95 % confidence intervals, paired TAPO-vs-base differences,
the correctable-misassignment rate measured under the base algorithm, and the plots.

One run = one (arm, seed); its result row (`RunResult`) holds the final greedy evaluation and the run's means of
the TAPO diagnostics over its training steps. Arms are named `<loss>` (the base algorithm; TAPO measures but does
not correct: beta = 0) and `<loss>+tapo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from openrlhf_tapo.eval.stats import MeanCI, mean_ci, welch_diff_ci

LOSS_NAMES = {"ppo": "GRPO", "sapo": "SAPO", "gspo_token": "GSPO-token", "gspo": "GSPO"}


@dataclass
class RunResult:
    arm: str  # "ppo", "ppo+tapo", "sapo", ...
    seed: int
    final_accuracy: float  # greedy, eval split, after the last step
    final_tool_call_rate: float  # fraction of eval trajectories with >= 1 tool-call attempt (malformed included)
    final_tool_calls: float  # tool-call attempts per eval trajectory
    train_accuracy_tail: float  # mean training accuracy (sampled) over the last quarter of steps
    failing_traj_correctable: float  # pooled over steps: correctable failing trajectories / failing trajectories
    failing_calls_correctable: float  # pooled: correctable calls in failing trajectories / their calls
    failing_calls_corrected: float  # pooled: corrected calls / calls in failing trajectories (0 without TAPO)
    transferred_credit: float  # mean credit per corrected call (tapo/mean_transferred_credit, call-weighted)
    seconds: float
    curve: list[float] = field(default_factory=list)  # training accuracy per step
    failing_trajectories: float = 0.0  # summed over steps (trajectories with success False and advantage < 0)
    failing_calls: float = 0.0  # tool calls in those, summed over steps
    corrected_calls: float = 0.0  # summed over steps
    successful_trajectories: float = 0.0  # summed over steps
    steps_with_witness: float = 0.0  # steps where some group had a successful trajectory with a tool call
    train_call_attempts: float = 0.0  # tool-call attempts per training trajectory (malformed included), step mean
    train_valid_calls: float = 0.0  # calls that reached a tool (valid JSON, known tool) per training trajectory

    def to_json(self) -> dict:
        return asdict(self)


def tapo_counts(metrics: Sequence[dict]) -> dict[str, float]:
    """TAPO diagnostics of a run pooled over its steps (per-step `tapo/*` batch statistics, as the loop logs them).

    A per-step fraction is 0 when its denominator is 0, so averaging fractions over steps would count steps without
    any failing call as "nothing correctable"; the counts are pooled instead.
    """

    def total(key: str, weight: str | None = None) -> float:
        return sum(m.get(key, 0.0) * (m.get(weight, 0.0) if weight else 1.0) for m in metrics)

    trajs, calls, corrected = (
        total("tapo/failing_trajectories"),
        total("tapo/failing_calls"),
        total("tapo/corrected_calls"),
    )
    steps = max(1, len(metrics))
    valid = sum(m.get(k, 0.0) for m in metrics for k in m if k.startswith("agent/calls/"))
    return {
        "train_call_attempts": total("agent/tool_calls") / steps,
        "train_valid_calls": valid / steps,
        "successful_trajectories": total("tapo/successful_trajectories"),
        "steps_with_witness": float(sum(m.get("tapo/ref_groups", 0.0) > 0 for m in metrics)),
        "failing_trajectories": trajs,
        "failing_calls": calls,
        "corrected_calls": corrected,
        "failing_traj_correctable": total("tapo/failing_traj_correctable_frac", "tapo/failing_trajectories") / trajs
        if trajs
        else 0.0,
        "failing_calls_correctable": total("tapo/failing_calls_correctable_frac", "tapo/failing_calls") / calls
        if calls
        else 0.0,
        "failing_calls_corrected": corrected / calls if calls else 0.0,
        "transferred_credit": total("tapo/mean_transferred_credit", "tapo/corrected_calls") / corrected
        if corrected
        else 0.0,
    }


def arm_label(arm: str) -> str:
    loss, _, tapo = arm.partition("+")
    return LOSS_NAMES.get(loss, loss) + (" + TAPO" if tapo else "")


def _by_arm(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    out: dict[str, list[RunResult]] = {}
    for r in results:
        out.setdefault(r.arm, []).append(r)
    return out


@dataclass
class PairComparison:
    base: str
    tapo: str
    paired: MeanCI | None  # mean over common seeds of (tapo - base) final accuracy
    welch: MeanCI | None
    seeds: list[int]


def paired_comparison(results: Sequence[RunResult], base: str, metric: str = "final_accuracy") -> PairComparison:
    """TAPO minus base on the seeds both arms ran (same seed = same warm start, same prompt order)."""
    arms = _by_arm(results)
    tapo = f"{base}+tapo"
    a = {r.seed: getattr(r, metric) for r in arms.get(tapo, [])}
    b = {r.seed: getattr(r, metric) for r in arms.get(base, [])}
    seeds = sorted(set(a) & set(b))
    paired = mean_ci([a[s] - b[s] for s in seeds]) if seeds else None
    welch = welch_diff_ci(list(a.values()), list(b.values())) if len(a) >= 2 and len(b) >= 2 else None
    return PairComparison(base, tapo, paired, welch, seeds)


def _ci(values: list[float]) -> str:
    return mean_ci(values).fmt(3) if values else "-"


def results_table(results: Sequence[RunResult]) -> str:
    """Per arm: n seeds, final accuracy, tool-call rate, tool calls, training accuracy (mean ± 95 % CI half width)."""
    lines = [
        "| arm | seeds | final accuracy (eval, greedy) | tool-call attempt rate | attempts / traj "
        "| train accuracy (last quarter) | failing calls corrected | min per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, rows in _by_arm(results).items():
        lines.append(
            f"| {arm_label(arm)} | {len(rows)} | {_ci([r.final_accuracy for r in rows])} "
            f"| {_ci([r.final_tool_call_rate for r in rows])} | {_ci([r.final_tool_calls for r in rows])} "
            f"| {_ci([r.train_accuracy_tail for r in rows])} | {_ci([r.failing_calls_corrected for r in rows])} "
            f"| {sum(r.seconds for r in rows) / len(rows) / 60:.1f} |"
        )
    return "\n".join(lines)


def comparison_table(results: Sequence[RunResult]) -> str:
    """Per base algorithm: TAPO - base final accuracy, paired over seeds and Welch (95 % CI)."""
    lines = [
        "| comparison | common seeds | paired diff (95 % CI) | Welch diff (95 % CI) |",
        "|---|---|---|---|",
    ]
    arms = _by_arm(results)
    for base in [a for a in arms if "+" not in a and f"{a}+tapo" in arms]:
        c = paired_comparison(results, base)
        paired = (
            f"{c.paired.mean:+.3f} [{c.paired.low:+.3f}, {c.paired.high:+.3f}]" if c.paired and c.paired.n > 1 else "-"
        )
        welch = f"{c.welch.mean:+.3f} [{c.welch.low:+.3f}, {c.welch.high:+.3f}]" if c.welch else "-"
        lines.append(f"| {arm_label(c.tapo)} vs {arm_label(base)} | {len(c.seeds)} | {paired} | {welch} |")
    return "\n".join(lines)


def correctable_table(results: Sequence[RunResult]) -> str:
    """The correctable-misassignment rate per arm (base arms: measured with TAPO's stage at beta = 0, i.e. under the
    base algorithm's own credit; +TAPO arms: the same measure while TAPO corrects)."""
    lines = [
        "| measured under | runs | failing trajectories correctable | failing tool calls correctable "
        "| pooled over all runs (trajectories, calls) |",
        "|---|---|---|---|---|",
    ]
    for arm, rows in _by_arm(results).items():
        trajs, calls = sum(r.failing_trajectories for r in rows), sum(r.failing_calls for r in rows)
        ct = sum(r.failing_traj_correctable * r.failing_trajectories for r in rows)
        cc = sum(r.failing_calls_correctable * r.failing_calls for r in rows)
        pooled = f"{ct:.0f}/{trajs:.0f} trajectories, {cc:.0f}/{calls:.0f} calls"
        lines.append(
            f"| {arm_label(arm)} | {len(rows)} | {_ci([r.failing_traj_correctable for r in rows])} "
            f"| {_ci([r.failing_calls_correctable for r in rows])} | {pooled} |"
        )
    return "\n".join(lines)


def witness_table(results: Sequence[RunResult]) -> str:
    """Why TAPO did or did not act: per arm, summed over runs and steps."""
    lines = [
        "| arm | steps | tool-call attempts / traj | calls reaching a tool / traj | steps with a witness group "
        "| successful trajectories | failing trajectories (adv < 0) | their tool calls | correctable calls "
        "| corrected calls | mean credit per corrected call |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, rows in _by_arm(results).items():
        corrected = sum(r.corrected_calls for r in rows)
        credit = sum(r.transferred_credit * r.corrected_calls for r in rows) / corrected if corrected else 0.0
        lines.append(
            f"| {arm_label(arm)} | {sum(len(r.curve) for r in rows)} "
            f"| {sum(r.train_call_attempts for r in rows) / len(rows):.2f} "
            f"| {sum(r.train_valid_calls for r in rows) / len(rows):.2f} "
            f"| {sum(r.steps_with_witness for r in rows):.0f} "
            f"| {sum(r.successful_trajectories for r in rows):.0f} | {sum(r.failing_trajectories for r in rows):.0f} "
            f"| {sum(r.failing_calls for r in rows):.0f} "
            f"| {sum(r.failing_calls_correctable * r.failing_calls for r in rows):.0f} | {corrected:.0f} "
            f"| {credit:.3f} |"
        )
    return "\n".join(lines)


def plot_study(results: Sequence[RunResult], out: Path) -> list[Path]:
    """accuracy_by_arm.png (final accuracy, mean and 95 % CI per arm, seeds as dots) and training_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    arms = _by_arm(results)
    paths = []
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=80)
    for i, (arm, rows) in enumerate(arms.items()):
        values = [r.final_accuracy for r in rows]
        ci = mean_ci(values)
        err = [[ci.mean - ci.low], [ci.high - ci.mean]] if ci.n > 1 else None
        colour = "tab:orange" if "+" in arm else "tab:blue"
        ax.bar(i, ci.mean, color=colour, alpha=0.6, yerr=err, capsize=4)
        ax.scatter([i] * len(values), values, color="k", s=8, zorder=3)
    ax.set_xticks(range(len(arms)), [arm_label(a) for a in arms], rotation=20, fontsize=7)
    ax.set_ylabel("final eval accuracy")
    ax.set_title("final accuracy per arm (mean, 95% CI, seeds)", fontsize=9)
    fig.tight_layout()
    paths.append(out / "accuracy_by_arm.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=80)
    for arm, rows in arms.items():
        length = min(len(r.curve) for r in rows)
        if length == 0:
            continue
        mean = [sum(r.curve[t] for r in rows) / len(rows) for t in range(length)]
        ax.plot(range(1, length + 1), mean, label=arm_label(arm), ls="--" if "+" not in arm else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("training accuracy (sampled)")
    ax.set_title("training accuracy, mean over seeds", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "training_curves.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths
