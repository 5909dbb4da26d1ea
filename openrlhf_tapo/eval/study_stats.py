"""Aggregation of the CPU study on the bundled task: the gates, per-arm means with 95 % confidence intervals, paired
TAPO-minus-base differences, the correctable-misassignment rate measured under the base algorithm, and the plots.

One run = one (arm, seed); its result row (`RunResult`) holds the final evaluation on the held-out eval split
(sampled at temperature 1 with fixed sampling seeds, and greedy), the run's per-step curves and its TAPO
diagnostics pooled over its steps. Arms are named `<loss>` (the base algorithm; TAPO measures but does not correct:
beta = 0) and `<loss>+tapo`; seed s of a TAPO arm is paired with seed s of its base arm (same warm start, same
prompt order, same rollout sampling seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from openrlhf_tapo.eval.stats import MeanCI, band, mean_ci, signed
from openrlhf_tapo.eval.tapo_counts import COUNTS, stat_counts

LOSS_NAMES = {"ppo": "GRPO", "sapo": "SAPO", "gspo_token": "GSPO-token", "gspo": "GSPO"}
# result field -> what the paired comparison calls it
PAIRED_METRICS = {
    "sampled_accuracy": "final accuracy, sampled (T = 1)",
    "greedy_accuracy": "final accuracy, greedy",
    "train_accuracy_mean": "training accuracy, mean over the run",
}
# curve name -> (metrics.jsonl key, axis label)
CURVES = {
    "accuracy": ("accuracy", "training accuracy (T = 1)"),
    "tool_call_rate": ("tool_call_rate", "tool-call rate"),
    "entropy": ("policy/entropy", "entropy estimate (nats/token)"),
    "correctable": ("tapo/failing_traj_correctable_frac", "correctable failing trajectories"),
}


@dataclass
class RunResult:
    arm: str  # "ppo", "ppo+tapo", "sapo", ...
    seed: int
    sampled_accuracy: float  # eval split, T = 1, several samples per question on fixed sampling seeds
    greedy_accuracy: float  # eval split, greedy
    tool_call_rate: float  # eval split, sampled: share of trajectories with >= 1 tool-call attempt
    train_accuracy_mean: float  # training accuracy (T = 1 rollouts) averaged over the run's steps
    seconds: float
    # per step: accuracy, tool_call_rate, entropy, correctable (None where no trajectory failed)
    curves: dict[str, list[float | None]] = field(default_factory=dict)
    failing_traj_correctable: float = 0.0  # pooled over steps: correctable failing trajectories / failing ones
    failing_calls_correctable: float = 0.0  # pooled: correctable calls in failing trajectories / their calls
    failing_calls_corrected: float = 0.0  # pooled: corrected calls / calls in failing trajectories (0 without TAPO)
    transferred_credit: float = 0.0  # mean credit per corrected call (tapo/mean_transferred_credit, call-weighted)
    failing_trajectories: float = 0.0  # summed over steps (trajectories with success False and advantage < 0)
    failing_calls: float = 0.0  # tool calls in those, summed over steps
    corrected_calls: float = 0.0  # summed over steps
    successful_trajectories: float = 0.0  # summed over steps
    steps_with_witness: float = 0.0  # steps where some group had a successful trajectory with a tool call
    train_call_attempts: float = 0.0  # tool-call attempts per training trajectory (malformed included), step mean
    train_valid_calls: float = 0.0  # calls that reached a tool (valid JSON, known tool) per training trajectory
    # mean sampled score per eval question (eval order), paired with gates.json's; absent in runs before 2026-12-06
    eval_question_scores: list[float] = field(default_factory=list)
    # eval split, sampled: share of trajectories whose first error is each kind (agent/failures.py); gates.json's
    # `eval_failures` is the warm start's, on the same questions and seeds; absent in runs before 2026-12-06
    eval_failures: dict[str, float] = field(default_factory=dict)
    # a task with several question kinds (recall_cost preset): the sampled eval per kind (`by_kind` of
    # adapter/inprocess/agent_rollouts.py)
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def run_curves(metrics: Sequence[dict]) -> dict[str, list[float | None]]:
    """The per-step curves of a run from its metrics.jsonl rows; the correctable rate is None at steps without a
    failing trajectory (a 0 there would read as "nothing correctable"). With question kinds (the loop's
    `kind/<kind>/...` keys) also `<kind>/accuracy` and `<kind>/tool_call_rate`, None at steps that drew no such
    question."""
    curves = {name: [m.get(key, 0.0) for m in metrics] for name, (key, _) in CURVES.items() if name != "correctable"}
    curves["correctable"] = [
        m.get("tapo/failing_traj_correctable_frac") if m.get("tapo/failing_trajectories", 0.0) > 0 else None
        for m in metrics
    ]
    kinds = sorted({key.split("/")[1] for m in metrics for key in m if key.startswith("kind/")})
    for kind in kinds:
        for name in ("accuracy", "tool_call_rate"):
            curves[f"{kind}/{name}"] = [m.get(f"kind/{kind}/{name}") for m in metrics]
    return curves


def tapo_counts(metrics: Sequence[dict]) -> dict[str, float]:
    """TAPO diagnostics of a run pooled over its steps (per-step `tapo/*` batch statistics, as the loop logs them):
    rates are ratios of pooled counts (eval/tapo_counts.py says why)."""

    def total(key: str, weight: str | None = None) -> float:
        return sum(m.get(key, 0.0) * (m.get(weight, 0.0) if weight else 1.0) for m in metrics)

    per_step = [stat_counts(m, "tapo/") for m in metrics]
    pooled = {name: sum(step[name] for step in per_step) for name in COUNTS}
    trajs, calls, corrected = pooled["failing_trajectories"], pooled["failing_calls"], pooled["corrected_calls"]
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
        "failing_traj_correctable": pooled["correctable_trajectories"] / trajs if trajs else 0.0,
        "failing_calls_correctable": pooled["correctable_calls"] / calls if calls else 0.0,
        "failing_calls_corrected": corrected / calls if calls else 0.0,
        "transferred_credit": total("tapo/mean_transferred_credit", "tapo/corrected_calls") / corrected
        if corrected
        else 0.0,
    }


# An arm is "<loss>[+<estimator>...]", the estimators in the registry's order (algorithms/estimators.py).
MODIFIER_NAMES = {"gigpo": "GiGPO", "turn_reward": "turn reward", "tapo": "TAPO"}


def arm_parts(arm: str) -> tuple[str, tuple[str, ...]]:
    """(policy loss, the estimators the arm switches on) of an arm name such as "ppo+gigpo+tapo"."""
    loss, *mods = arm.split("+")
    unknown = [m for m in mods if m not in MODIFIER_NAMES]
    if unknown:
        raise ValueError(f"arm {arm!r}: unknown part(s) {unknown}; after the loss choose from {list(MODIFIER_NAMES)}")
    return loss, tuple(mods)


def arm_label(arm: str) -> str:
    loss, mods = arm_parts(arm)
    return " + ".join([LOSS_NAMES.get(loss, loss), *(MODIFIER_NAMES[m] for m in mods)])


def _by_arm(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    out: dict[str, list[RunResult]] = {}
    for r in results:
        out.setdefault(r.arm, []).append(r)
    return out


def _pairs(results: Sequence[RunResult]) -> list[tuple[str, str]]:
    """(arm, base) for every arm among `results` whose base (the same arm without its last estimator: ppo+tapo ->
    ppo, ppo+gigpo+tapo -> ppo+gigpo) is among them too."""
    arms = _by_arm(results)
    return [(a, a.rpartition("+")[0]) for a in arms if "+" in a and a.rpartition("+")[0] in arms]


@dataclass
class PairComparison:
    base: str
    arm: str
    metric: str
    paired: MeanCI | None  # mean over common seeds of (tapo - base), Student-t 95 % interval
    seeds: list[int]


def paired_comparison(
    results: Sequence[RunResult], base: str, metric: str = "sampled_accuracy", arm: str | None = None
) -> PairComparison:
    """`arm` (default: base + TAPO) minus base on the seeds both arms ran (same seed = same warm start, prompt order,
    sampling seeds)."""
    arms = _by_arm(results)
    arm = arm or f"{base}+tapo"
    a = {r.seed: getattr(r, metric) for r in arms.get(arm, [])}
    b = {r.seed: getattr(r, metric) for r in arms.get(base, [])}
    seeds = sorted(set(a) & set(b))
    paired = mean_ci([a[s] - b[s] for s in seeds]) if seeds else None
    return PairComparison(base, arm, metric, paired, seeds)


def _ci(values: list[float]) -> str:
    return mean_ci(values).fmt(3) if values else "-"


def gates_table(checked: dict[str, dict]) -> str:
    """The warm start's gates (`task.gates.check`): value, required range, PASS / FAIL."""
    lines = ["| gate | value | required | result |", "|---|---|---|---|"]
    for name, g in checked.items():
        low, high = g["range"]
        need = f">= {low}" if high is None else f"{low} - {high}"
        lines.append(f"| {name} | {g['value']:.3f} | {need} | {'PASS' if g['passed'] else '**FAIL**'} |")
    return "\n".join(lines)


def results_table(results: Sequence[RunResult]) -> str:
    """Per arm (mean ± 95 % CI half width over seeds): final sampled and greedy accuracy, training accuracy over
    the run, eval tool-call rate, pooled correctable rate, minutes per run."""
    lines = [
        "| arm | seeds | final acc, sampled (T = 1) | final acc, greedy | train acc, mean over run "
        "| eval tool-call rate | correctable failing trajectories | failing calls corrected | min per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, rows in _by_arm(results).items():
        lines.append(
            f"| {arm_label(arm)} | {len(rows)} | {_ci([r.sampled_accuracy for r in rows])} "
            f"| {_ci([r.greedy_accuracy for r in rows])} | {_ci([r.train_accuracy_mean for r in rows])} "
            f"| {_ci([r.tool_call_rate for r in rows])} | {_ci([r.failing_traj_correctable for r in rows])} "
            f"| {_ci([r.failing_calls_corrected for r in rows])} "
            f"| {sum(r.seconds for r in rows) / len(rows) / 60:.1f} |"
        )
    return "\n".join(lines)


def kinds_table(results: Sequence[RunResult]) -> str:
    """Per arm and question kind (mean ± 95 % CI half width over seeds): the final sampled eval's accuracy and
    tool-call rate, and the training tool-call rate of the run's last step that drew the kind; "" when no run has
    kinds (the default task)."""
    kinds = sorted({kind for r in results for kind in r.by_kind})
    if not kinds:
        return ""
    lines = [
        "| arm | question kind | seeds | eval accuracy | eval tool-call rate | training tool-call rate, last step |",
        "|---|---|---|---|---|---|",
    ]
    for arm, rows in _by_arm(results).items():
        for kind in kinds:
            have = [r for r in rows if kind in r.by_kind]
            curves = [[v for v in r.curves.get(f"{kind}/tool_call_rate", []) if v is not None] for r in have]
            last = [curve[-1] for curve in curves if curve]
            lines.append(
                f"| {arm_label(arm)} | {kind} | {len(have)} | {_ci([r.by_kind[kind]['accuracy'] for r in have])} "
                f"| {_ci([r.by_kind[kind]['tool_call_rate'] for r in have])} | {_ci(last)} |"
            )
    return "\n".join(lines)


def comparison_table(results: Sequence[RunResult]) -> str:
    """Per arm and metric: the arm minus its base (the arm without its last estimator: TAPO minus base, GiGPO minus
    GRPO, ...), paired over seeds (mean, 95 % t interval; bold when it excludes 0)."""
    lines = ["| comparison | metric | paired seeds | arm - base [95 % CI] |", "|---|---|---|---|"]
    for arm, base in _pairs(results):
        for metric, name in PAIRED_METRICS.items():
            c = paired_comparison(results, base, metric, arm)
            diff = signed(c.paired) if c.paired else "-"
            lines.append(f"| {arm_label(arm)} vs {arm_label(base)} | {name} | {len(c.seeds)} | {diff} |")
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
            f"| {arm_label(arm)} | {sum(len(r.curves.get('accuracy', [])) for r in rows)} "
            f"| {sum(r.train_call_attempts for r in rows) / len(rows):.2f} "
            f"| {sum(r.train_valid_calls for r in rows) / len(rows):.2f} "
            f"| {sum(r.steps_with_witness for r in rows):.0f} "
            f"| {sum(r.successful_trajectories for r in rows):.0f} | {sum(r.failing_trajectories for r in rows):.0f} "
            f"| {sum(r.failing_calls for r in rows):.0f} "
            f"| {sum(r.failing_calls_correctable * r.failing_calls for r in rows):.0f} | {corrected:.0f} "
            f"| {credit:.3f} |"
        )
    return "\n".join(lines)


def summary(results: Sequence[RunResult]) -> dict:
    """Machine-readable aggregates: per arm the means and 95 % CIs, per base arm the paired differences."""
    arms = {}
    for arm, rows in _by_arm(results).items():
        entry: dict = {"seeds": sorted(r.seed for r in rows)}
        for metric in (*PAIRED_METRICS, "tool_call_rate", "failing_traj_correctable"):
            entry[metric] = vars(mean_ci([getattr(r, metric) for r in rows]))
        arms[arm] = entry
    paired = {
        f"{arm} - {base}": {
            metric: {"seeds": c.seeds, **vars(c.paired)} if c.paired else None
            for metric in PAIRED_METRICS
            for c in [paired_comparison(results, base, metric, arm)]
        }
        for arm, base in _pairs(results)
    }
    return {"arms": arms, "paired": paired}


def failures_table(results: Sequence[RunResult], before: dict[str, float]) -> str:
    """The eval's failure taxonomy (share of all sampled trajectories whose first error is each kind): the warm start
    (`before`, from gates.json) and per arm after RL (mean ± 95 % CI half width over seeds)."""
    kinds = list(before) or sorted({k for r in results for k in r.eval_failures})
    arms = {arm: rows for arm, rows in _by_arm(results).items() if all(r.eval_failures for r in rows)}
    lines = [
        "| first error | warm start | " + " | ".join(arm_label(a) for a in arms) + " |",
        "|---|---|" + "---|" * len(arms),
    ]
    for kind in kinds:
        after = [_ci([r.eval_failures.get(kind, 0.0) for r in rows]) for rows in arms.values()]
        lines.append(f"| {kind} | {before.get(kind, float('nan')):.3f} | " + " | ".join(after) + " |")
    return "\n".join(lines)


def plot_failures(results: Sequence[RunResult], before: dict[str, float], path: Path) -> Path:
    """Stacked bars: the eval's failure taxonomy of the warm start and of each arm after RL (mean over seeds); the
    bar's height is the failure rate, each segment the share of trajectories whose first error is that kind."""
    plt = _pyplot()
    bars = {"warm start": before}
    for arm, rows in _by_arm(results).items():
        if all(r.eval_failures for r in rows):
            bars[arm_label(arm)] = {k: sum(r.eval_failures.get(k, 0.0) for r in rows) / len(rows) for k in before}
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=70)
    bottom = [0.0] * len(bars)
    for kind in before:
        heights = [shares.get(kind, 0.0) for shares in bars.values()]
        ax.bar(range(len(bars)), heights, bottom=bottom, label=kind, width=0.6)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xticks(range(len(bars)), list(bars), fontsize=6, rotation=15)
    ax.set_ylabel("share of eval trajectories (T = 1)", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6, title="first error", title_fontsize=6)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _style(arm: str) -> dict:
    colours = {"ppo": "tab:blue", "sapo": "tab:green", "gspo_token": "tab:red", "gspo": "tab:purple"}
    loss, mods = arm_parts(arm)
    return {"color": colours.get(loss, "tab:gray"), "ls": "-" if "tapo" in mods else ("-." if mods else "--")}


def plot_curves(results: Sequence[RunResult], path: Path) -> Path:
    """Per-step curves (training accuracy, tool-call rate, entropy, correctable rate), per arm the mean over seeds
    with its 95 % band."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(8, 5), dpi=70)
    for ax, (name, (_, label)) in zip(axes.flat, CURVES.items(), strict=True):
        for arm, rows in _by_arm(results).items():
            mean, low, high = band([r.curves.get(name, []) for r in rows])
            steps = range(1, len(mean) + 1)
            ax.plot(steps, mean, lw=1.2, marker=".", ms=3, label=arm_label(arm), **_style(arm))
            ax.fill_between(steps, low, high, color=_style(arm)["color"], alpha=0.12, lw=0)
        ax.set_ylabel(label, fontsize=7)
        ax.set_xlabel("RL step", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_differences(results: Sequence[RunResult], path: Path) -> Path:
    """Forest plot: TAPO minus base per base algorithm and metric, paired over seeds, 95 % t interval."""
    plt = _pyplot()
    rows = [
        (c, name) for arm, base in _pairs(results) for metric, name in PAIRED_METRICS.items()
        for c in [paired_comparison(results, base, metric, arm)] if c.paired
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2), dpi=70)
    for y, (c, _) in enumerate(rows):
        ci = c.paired
        err = [[ci.mean - ci.low], [ci.high - ci.mean]] if ci.n > 1 else None
        ax.errorbar(ci.mean, -y, xerr=err, fmt="o", ms=3, color=_style(c.base)["color"])
    ax.axvline(0, color="k", lw=0.8)
    labels = [f"{arm_label(c.arm)} - {arm_label(c.base)}: {name} (n={len(c.seeds)})" for c, name in rows]
    ax.set_yticks([-y for y in range(len(rows))], labels, fontsize=6)
    ax.set_xlabel("TAPO minus base (paired over seeds, 95 % CI)", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_study(results: Sequence[RunResult], out: Path, failures_before: dict[str, float] | None = None) -> list[Path]:
    """curves.png and paired_differences.png in `out`, and failures.png when the warm start's eval taxonomy
    (`failures_before`) is given and some run has its own."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_curves(results, out / "curves.png"), plot_differences(results, out / "paired_differences.png")]
    if failures_before and any(r.eval_failures for r in results):
        paths.append(plot_failures(results, failures_before, out / "failures.png"))
    return paths
