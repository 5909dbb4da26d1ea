"""Aggregation, markdown report and plots of part 2 of the mechanism study (one JSON per cell, cli/simulate.py
--grid multicall).

Paired by seed, as part 1 (sim/mechanism_report.py, whose helpers this uses): a TAPO arm against the base arm of its
optimizer at the same lr, and each safety option against full TAPO. The spurious-credit share is the environment's
truth: of the calls whose turn TAPO changed, those that brought nothing in their own trajectory (pooled over steps
and seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from openrlhf_tapo.eval.stats import band, signed
from openrlhf_tapo.sim.mechanism_report import _pyplot, _save, load_cells, metric_ci, paired_difference
from openrlhf_tapo.sim.mechanism_study import STUDY_LR, Cell
from openrlhf_tapo.sim.multicall_study import ADAPTIVE_LRS, GROUP_SIZE, REGIMES, SAFETY_ARMS, base_of

__all__ = ["TITLE", "load_cells", "markdown", "plot_all", "summary"]
TITLE = "TAPO mechanism study, part 2: two calls per trajectory, state-dependent value, adaptive optimisers"
METRICS = ("final_accuracy", "mean_accuracy", "final_call_rate", "final_calls_per_trajectory")
SGD_TAPO_ARMS = ("grpo+tapo", *(arm.name for arm in SAFETY_ARMS))


def _find(cells, regime: str, arm: str, lr: float = STUDY_LR) -> dict | None:
    return cells.get(Cell(regime, GROUP_SIZE, lr, arm).name)


def _metrics(cell: dict) -> list[str]:
    return [m for m in METRICS if m in cell["runs"][0]]


def _regimes(cells) -> list[str]:
    present = {c["regime"] for c in cells.values()}
    return [r for r in REGIMES if r in present]


def spurious_share(cell: dict, steps: slice = slice(None)) -> tuple[float, float]:
    """(credited calls per step and run, share of them uninformative in their own trajectory), pooled."""
    rows = [row for row in cell["tapo_steps"][steps] if "credited_calls" in row]
    credited = sum(row["credited_calls"] for row in rows)
    spurious = sum(row["credited_uninformative_calls"] for row in rows)
    per_step = credited / (len(rows) * len(cell["runs"])) if rows else float("nan")
    return per_step, (spurious / credited if credited else float("nan"))


def _diff(cells, regime: str, arm: str, against: str, metric: str, lr: float = STUDY_LR) -> str:
    a, b = _find(cells, regime, arm, lr), _find(cells, regime, against, lr)
    if a is None or b is None or metric not in a["runs"][0]:
        return "—"
    return signed(paired_difference(a, b, metric))


def main_table(cells) -> str:
    lines = [
        "| regime | GRPO final acc | GRPO+TAPO final acc | Δ final acc [95 % CI] | Δ mean acc [95 % CI] "
        "| calls per trajectory GRPO → TAPO | TAPO's credited calls per step: share spurious |",
        "|---|---|---|---|---|---|---|",
    ]
    for regime in _regimes(cells):
        base, tapo = _find(cells, regime, "grpo"), _find(cells, regime, "grpo+tapo")
        if base is None or tapo is None:
            continue
        calls = "final_calls_per_trajectory" if "final_calls_per_trajectory" in base["runs"][0] else "final_call_rate"
        per_step, share = spurious_share(tapo)
        lines.append(
            f"| {regime} | {metric_ci(base, 'final_accuracy').fmt()} | {metric_ci(tapo, 'final_accuracy').fmt()} "
            f"| {_diff(cells, regime, 'grpo+tapo', 'grpo', 'final_accuracy')} "
            f"| {_diff(cells, regime, 'grpo+tapo', 'grpo', 'mean_accuracy')} "
            f"| {metric_ci(base, calls).mean:.2f} → {metric_ci(tapo, calls).mean:.2f} "
            f"| {per_step:.2f}: {share:.2f} |"
        )
    return "\n".join(lines)


def arms_table(cells, metric: str, against: str | None) -> str:
    """Every SGD TAPO arm minus GRPO (`against` None) or minus another arm (e.g. full TAPO)."""
    arms = [a for a in SGD_TAPO_ARMS if a != against]
    label = (lambda a: f"{a} − grpo") if against is None else (lambda a: f"{a} − {against}")
    lines = ["| regime | " + " | ".join(label(a) for a in arms) + " |", "|---|" + "---|" * len(arms)]
    for regime in _regimes(cells):
        row = [_diff(cells, regime, a, against or base_of(a), metric) for a in arms]
        if any(x != "—" for x in row):
            lines.append(f"| {regime} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def spurious_table(cells) -> str:
    lines = [
        "| regime | " + " | ".join(SGD_TAPO_ARMS) + " |",
        "|---|" + "---|" * len(SGD_TAPO_ARMS),
    ]
    for regime in _regimes(cells):
        row = []
        for arm in SGD_TAPO_ARMS:
            cell = _find(cells, regime, arm)
            if cell is None or not any("credited_calls" in r for r in cell["tapo_steps"]):
                row.append("—")
                continue
            per_step, share = spurious_share(cell)
            row.append(f"{per_step:.2f}: {share:.2f}")
        if any(x != "—" for x in row):
            lines.append(f"| {regime} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def step_credit_table(cells) -> str:
    """GiGPO's arms (SGD) against GRPO, GRPO + TAPO and each other: paired differences of final and mean accuracy."""
    pairs = [("grpo+gigpo", "grpo"), ("grpo+gigpo+tapo", "grpo+gigpo"), ("grpo+gigpo+tapo", "grpo+tapo"),
             ("grpo+gigpo", "grpo+tapo")]  # fmt: skip
    head = " | ".join(f"{a} − {b}: {m}" for a, b in pairs for m in ("final", "mean"))
    lines = [f"| regime | GiGPO singleton share | {head} |", "|---|---|" + "---|" * (2 * len(pairs))]
    for regime in _regimes(cells):
        gigpo = _find(cells, regime, "grpo+gigpo")
        if gigpo is None:
            continue
        shares = [row["gigpo_singleton_share"] for row in gigpo["tapo_steps"] if "gigpo_singleton_share" in row]
        row = [_diff(cells, regime, a, b, m) for a, b in pairs for m in ("final_accuracy", "mean_accuracy")]
        lines.append(f"| {regime} | {sum(shares) / len(shares):.2f} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def optimizer_table(cells) -> str:
    lines = [
        "| regime | optimizer | lr | base final acc | Δ final acc [95 % CI] | Δ mean acc [95 % CI] "
        "| call rate base → TAPO |",
        "|---|---|---|---|---|---|---|",
    ]
    settings = [("sgd", "grpo", STUDY_LR)] + [
        (opt, f"grpo_{opt}", lr) for opt in ("adam", "adamw") for lr in ADAPTIVE_LRS
    ]
    for regime in _regimes(cells):
        for opt, base_arm, lr in settings:
            base, tapo = _find(cells, regime, base_arm, lr), _find(cells, regime, f"{base_arm}+tapo", lr)
            if base is None or tapo is None:
                continue
            lines.append(
                f"| {regime} | {opt} | {lr:g} | {metric_ci(base, 'final_accuracy').fmt()} "
                f"| {signed(paired_difference(tapo, base, 'final_accuracy'))} "
                f"| {signed(paired_difference(tapo, base, 'mean_accuracy'))} "
                f"| {metric_ci(base, 'final_call_rate').mean:.2f} → {metric_ci(tapo, 'final_call_rate').mean:.2f} |"
            )
    return "\n".join(lines)


def summary(cells) -> dict:
    """Per cell: metric means and CIs, the paired difference against its base arm (TAPO arms) and against full TAPO
    (safety arms), and TAPO's credited calls per step with their spurious share."""
    out = {}
    for name, cell in cells.items():
        metrics = _metrics(cell)
        entry = {metric: vars(metric_ci(cell, metric)) for metric in metrics}
        arm, regime, lr = cell["arm"], cell["regime"], cell["lr"]
        references = {"paired_difference": base_of(arm)}
        if arm in SGD_TAPO_ARMS and arm != "grpo+tapo":
            references["minus_full_tapo"] = "grpo+tapo"
        for key, other in references.items():
            ref = None if other is None else _find(cells, regime, other, lr)
            if ref is not None:
                entry[key] = {m: vars(paired_difference(cell, ref, m)) for m in metrics}
        entry["credited_calls_per_step"], entry["credited_spurious_share"] = spurious_share(cell)
        out[name] = entry
    return out


_ARM_STYLE = {
    "grpo": ("black", "--"),
    "grpo+tapo": ("tab:blue", "-"),
    "grpo+tapo_b0.4": ("tab:cyan", "-"),
    "grpo+tapo_b1.2": ("tab:purple", "-"),
    "grpo+tapo_nosupport": ("tab:orange", "-"),
    "grpo+tapo_noclip": ("tab:olive", "-"),
    "grpo+tapo_window0": ("tab:green", "-"),
    "grpo+tapo_obs_exact": ("tab:red", "-"),
    "grpo+tapo_obs_overlap": ("tab:pink", "-"),
}


def _curves_plot(cells, key: str, ylabel: str, path: Path) -> Path:
    plt = _pyplot()
    regimes = [r for r in _regimes(cells) if _find(cells, r, "grpo+tapo_window0") is not None] or _regimes(cells)
    fig, axes = plt.subplots(1, len(regimes), figsize=(4.2 * len(regimes), 3.2), dpi=80, squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        for arm, (colour, style) in _ARM_STYLE.items():
            cell = _find(cells, regime, arm)
            if cell is None or key not in cell["runs"][0]:
                continue
            mean, low, high = band([run[key] for run in cell["runs"]])
            steps = cell["runs"][0]["steps"]
            ax.plot(steps, mean, color=colour, ls=style, lw=1.1, label=arm)
            ax.fill_between(steps, low, high, color=colour, alpha=0.12, lw=0)
        ax.set_title(regime, fontsize=8)
        ax.set_xlabel("RL step", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel, fontsize=7)
    axes[0][0].legend(fontsize=6, loc="best")
    return _save(plt, fig, path)


def _spurious_plot(cells, path: Path) -> Path:
    plt = _pyplot()
    regimes = [r for r in _regimes(cells) if _find(cells, r, "grpo+tapo_window0") is not None]
    fig, axes = plt.subplots(1, max(1, len(regimes)), figsize=(4.2 * max(1, len(regimes)), 3), dpi=80, squeeze=False)
    window = 10
    for ax, regime in zip(axes[0], regimes, strict=False):
        for arm in SGD_TAPO_ARMS:
            cell = _find(cells, regime, arm)
            if cell is None:
                continue
            starts = range(0, len(cell["tapo_steps"]), window)
            shares = [spurious_share(cell, slice(t, t + window))[1] for t in starts]
            ax.plot([t + window for t in starts], shares, color=_ARM_STYLE[arm][0], lw=1.1, label=arm)
        ax.set_title(f"{regime}: spurious share of TAPO's credited calls", fontsize=8)
        ax.set_xlabel("RL step (10-step windows, pooled over seeds)", fontsize=7)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    return _save(plt, fig, path)


def _optimizer_plot(cells, path: Path) -> Path:
    plt = _pyplot()
    regimes = _regimes(cells)
    fig, axes = plt.subplots(1, len(regimes), figsize=(3.4 * len(regimes), 3), dpi=80, squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        for opt, colour in (("sgd", "black"), ("adam", "tab:blue"), ("adamw", "tab:red")):
            base_arm = "grpo" if opt == "sgd" else f"grpo_{opt}"
            for lr in (STUDY_LR,) if opt == "sgd" else ADAPTIVE_LRS:
                tapo, base = _find(cells, regime, f"{base_arm}+tapo", lr), _find(cells, regime, base_arm, lr)
                if tapo is None or base is None:
                    continue
                ci = paired_difference(tapo, base, "mean_accuracy")
                x = f"{opt}\n{lr:g}"
                ax.errorbar(x, ci.mean, yerr=[[ci.mean - ci.low], [ci.high - ci.mean]], fmt="o", ms=3, color=colour)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(regime, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("TAPO − base: mean accuracy over the run (95 % CI)", fontsize=7)
    return _save(plt, fig, path)


def plot_all(cells, out: Path) -> list[Path]:
    """Accuracy and calls-per-trajectory curves of the SGD arms, the spurious share over steps, and TAPO − base
    per optimiser and lr."""
    out.mkdir(parents=True, exist_ok=True)
    return [
        _curves_plot(cells, "accuracy_curve", "accuracy (exact, T=1)", out / "multicall_accuracy.png"),
        _curves_plot(cells, "calls_per_trajectory_curve", "calls per trajectory", out / "multicall_calls.png"),
        _spurious_plot(cells, out / "multicall_spurious.png"),
        _optimizer_plot(cells, out / "multicall_optimizers.png"),
    ]


def markdown(cells, header: str, figures: Sequence[Path]) -> str:
    parts = [
        header,
        "## GRPO vs GRPO + TAPO (SGD, lr 0.2, β 0.8)\n",
        "Bold: the paired 95 % CI excludes 0. 'Share spurious': of the calls whose turn TAPO changed, the share that "
        "brought nothing in their own trajectory (the environment's truth), pooled over steps and seeds.\n",
        main_table(cells),
        "\n## Every SGD TAPO arm minus GRPO: final accuracy\n",
        arms_table(cells, "final_accuracy", None),
        "\n## Every SGD TAPO arm minus GRPO: accuracy averaged over the run\n",
        arms_table(cells, "mean_accuracy", None),
        "\n## Each option minus full TAPO (where a safety option changes the result): final accuracy\n",
        arms_table(cells, "final_accuracy", "grpo+tapo"),
        "\n## Each option minus full TAPO: accuracy averaged over the run\n",
        arms_table(cells, "mean_accuracy", "grpo+tapo"),
        "\n## Call inflation: each arm minus GRPO, final calls per trajectory\n",
        arms_table(cells, "final_calls_per_trajectory", None),
        "\n## TAPO's credited calls per step and run: share spurious\n",
        spurious_table(cells),
        "\n## Optimisers: TAPO minus its base arm (same optimiser and lr)\n",
        optimizer_table(cells),
        "\n## Step-level credit: GiGPO (ω 1, γ 0.95, mean_norm) with and without TAPO (SGD, lr 0.2)\n",
        "Singleton share: of all turns, those whose step group (same question, same calls and observations before "
        "them) has one member, mean over steps and seeds.\n",
        step_credit_table(cells),
        "\n## Figures\n",
        "\n\n".join(f"![{path.stem}]({path.name})" for path in figures),
    ]
    return "\n".join(parts) + "\n"
