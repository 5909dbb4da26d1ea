"""Aggregation, markdown report and plots of the mechanism study (one JSON per grid cell, see cli/simulate.py).

Every difference is paired by seed (seed s of a TAPO arm against seed s of its base arm, which drew the same random
numbers) and reported as mean with a Student-t 95 % CI over seeds. The correctable-misassignment rate is TAPO's own
statistic (failing trajectories with a call that a successful trajectory of the group made with equal parameters),
pooled over the steps and runs of a base arm, where TAPO measures without correcting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from openrlhf_tapo.eval.stats import MeanCI, band, mean_ci, signed
from openrlhf_tapo.sim.env import REGIMES
from openrlhf_tapo.sim.mechanism_study import ARMS, STUDY_LR, Cell, base_of

TITLE = "TAPO mechanism study (controlled tool-use environment)"

METRICS = {
    "final_accuracy": "final accuracy (exact, T = 1)",
    "mean_accuracy": "accuracy averaged over the run (learning speed)",
    "final_call_rate": "final tool-call rate",
    "final_greedy_accuracy": "final greedy accuracy",
}


def load_cells(runs_dir: Path) -> dict[str, dict]:
    """Every finished cell in `runs_dir`, by cell name."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(runs_dir.glob("*.json"))}


def _find(cells: dict[str, dict], regime: str, group: int, lr: float, arm: str) -> dict | None:
    return cells.get(Cell(regime, group, lr, arm).name)


def _pair(cells: dict[str, dict], regime: str, group: int, lr: float, arm: str) -> tuple[dict | None, dict | None]:
    """The cells of a TAPO arm and of its base arm in one setting (None where a cell is missing)."""
    return _find(cells, regime, group, lr, arm), _find(cells, regime, group, lr, base_of(arm))


def metric_ci(cell: dict, metric: str) -> MeanCI:
    return mean_ci([run[metric] for run in cell["runs"]])


def paired_difference(tapo: dict, base: dict, metric: str) -> MeanCI:
    """mean over shared seeds of tapo[metric] - base[metric], with a 95 % t interval."""
    by_seed = {run["seed"]: run[metric] for run in base["runs"]}
    diffs = [run[metric] - by_seed[run["seed"]] for run in tapo["runs"] if run["seed"] in by_seed]
    if not diffs:
        raise ValueError(f"cells {tapo['cell']} and {base['cell']} share no seed")
    return mean_ci(diffs)


def correctable_rate(cell: dict, steps: slice = slice(None)) -> float:
    """Pooled correctable failing trajectories / failing trajectories over `steps` of the cell (0 when none fail)."""
    rows = cell["tapo_steps"][steps]
    failing = sum(row["failing_trajectories"] for row in rows)
    return sum(row["correctable_trajectories"] for row in rows) / failing if failing else 0.0


def _settings(cells: dict[str, dict]) -> list[tuple[str, int]]:
    seen = {(c["regime"], c["group_size"]) for c in cells.values() if c["lr"] == STUDY_LR}
    order = list(REGIMES)
    return sorted(seen, key=lambda s: (order.index(s[0]) if s[0] in order else len(order), -s[1]))


def main_table(cells: dict[str, dict]) -> str:
    lines = [
        "| regime | G | GRPO final acc | GRPO+TAPO final acc | Δ final acc [95 % CI] | Δ mean acc over run [95 % CI] "
        "| tool-call rate GRPO → TAPO | correctable under GRPO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for regime, group in _settings(cells):
        tapo, base = _pair(cells, regime, group, STUDY_LR, "grpo+tapo")
        if base is None or tapo is None:
            continue
        lines.append(
            f"| {regime} | {group} | {metric_ci(base, 'final_accuracy').fmt()} "
            f"| {metric_ci(tapo, 'final_accuracy').fmt()} "
            f"| {signed(paired_difference(tapo, base, 'final_accuracy'))} "
            f"| {signed(paired_difference(tapo, base, 'mean_accuracy'))} "
            f"| {metric_ci(base, 'final_call_rate').mean:.2f} → {metric_ci(tapo, 'final_call_rate').mean:.2f} "
            f"| {correctable_rate(base):.2f} |"
        )
    return "\n".join(lines)


def arms_table(cells: dict[str, dict], metric: str) -> str:
    tapo_arms = [a for a in ARMS if base_of(a) is not None]
    lines = [
        "| regime | G | " + " | ".join(f"{a} − {base_of(a)}" for a in tapo_arms) + " |",
        "|---|---|" + "---|" * len(tapo_arms),
    ]
    for regime, group in _settings(cells):
        row = []
        for arm in tapo_arms:
            tapo, base = _pair(cells, regime, group, STUDY_LR, arm)
            row.append("—" if tapo is None or base is None else signed(paired_difference(tapo, base, metric)))
        lines.append(f"| {regime} | {group} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def correctable_table(cells: dict[str, dict]) -> str:
    bases = [a for a in ARMS if base_of(a) is None]
    lines = [
        "| regime | G | " + " | ".join(f"{a}: all steps (first 10 → last 10)" for a in bases) + " |",
        "|---|---|" + "---|" * len(bases),
    ]
    for regime, group in _settings(cells):
        row = []
        for arm in bases:
            cell = _find(cells, regime, group, STUDY_LR, arm)
            row.append(
                "—"
                if cell is None
                else f"{correctable_rate(cell):.2f} ({correctable_rate(cell, slice(0, 10)):.2f} → "
                f"{correctable_rate(cell, slice(-10, None)):.2f})"
            )
        lines.append(f"| {regime} | {group} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def sensitivity_table(cells: dict[str, dict]) -> str:
    lines = [
        "| regime | G | lr | GRPO final acc | Δ final acc [95 % CI] | Δ mean acc [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted({(c["regime"], c["group_size"], c["lr"]) for c in cells.values()}, key=lambda k: (k[0], -k[1], k[2]))
    for regime, group, lr in keys:
        tapo, base = _pair(cells, regime, group, lr, "grpo+tapo")
        others = {c["lr"] for c in cells.values() if c["regime"] == regime and c["group_size"] == group}
        if base is None or tapo is None or len(others) < 2:
            continue
        lines.append(
            f"| {regime} | {group} | {lr:g} | {metric_ci(base, 'final_accuracy').fmt()} "
            f"| {signed(paired_difference(tapo, base, 'final_accuracy'))} "
            f"| {signed(paired_difference(tapo, base, 'mean_accuracy'))} |"
        )
    return "\n".join(lines)


def summary(cells: dict[str, dict]) -> dict:
    """Machine-readable aggregates: per cell the metric means and CIs, and paired differences for TAPO arms."""
    out = {}
    for name, cell in cells.items():
        entry = {metric: vars(metric_ci(cell, metric)) for metric in METRICS}
        entry["correctable_rate"] = correctable_rate(cell)
        base = base_of(cell["arm"])
        base_cell = None if base is None else _find(cells, cell["regime"], cell["group_size"], cell["lr"], base)
        if base_cell is not None:
            entry["paired_difference"] = {m: vars(paired_difference(cell, base_cell, m)) for m in METRICS}
        out[name] = entry
    return out


_LOSS_COLOURS = {"ppo": "tab:blue", "sapo": "tab:green", "gspo_token": "tab:red"}
_ABLATION_COLOURS = {
    "grpo": "black",
    "grpo+tapo": "tab:blue",
    "grpo+tapo_b0.4": "tab:cyan",
    "grpo+tapo_b1.2": "tab:purple",
    "grpo+tapo_nosupport": "tab:orange",
    "grpo+tapo_noclip": "tab:olive",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _grid_plot(cells, key: str, arms: dict[str, tuple[str, str]], ylabel: str, path: Path) -> Path:
    plt = _pyplot()
    settings = _settings(cells)
    regimes = list(dict.fromkeys(r for r, _ in settings))
    groups = sorted({g for _, g in settings}, reverse=True)
    fig, axes = plt.subplots(
        len(regimes), len(groups), figsize=(4.2 * len(groups), 2.4 * len(regimes)), dpi=80, squeeze=False
    )
    for i, regime in enumerate(regimes):
        for j, group in enumerate(groups):
            ax = axes[i][j]
            for arm, (colour, style) in arms.items():
                cell = _find(cells, regime, group, STUDY_LR, arm)
                if cell is None:
                    continue
                mean, low, high = band([run[key] for run in cell["runs"]])
                steps = cell["runs"][0]["steps"]
                ax.plot(steps, mean, color=colour, ls=style, lw=1.2, label=arm)
                ax.fill_between(steps, low, high, color=colour, alpha=0.15, lw=0)
            ax.set_title(f"{regime}, G={group}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(ylabel, fontsize=7)
    axes[0][0].legend(fontsize=6, loc="best")
    for ax in axes[-1]:
        ax.set_xlabel("RL step", fontsize=7)
    return _save(plt, fig, path)


def _differences_plot(cells, path: Path) -> Path:
    plt = _pyplot()
    tapo_arms = [a for a in ARMS if base_of(a) is not None]
    settings = _settings(cells)
    fig, ax = plt.subplots(figsize=(7.5, 0.22 * len(settings) * len(tapo_arms) + 1), dpi=80)
    y, ticks, labels = 0, [], []
    for regime, group in settings:
        for arm in tapo_arms:
            tapo, base = _pair(cells, regime, group, STUDY_LR, arm)
            if tapo is None or base is None:
                continue
            ci = paired_difference(tapo, base, "final_accuracy")
            colour = _LOSS_COLOURS[ARMS[arm].loss]
            ax.errorbar(ci.mean, y, xerr=[[ci.mean - ci.low], [ci.high - ci.mean]], fmt="o", ms=3, color=colour)
            ticks.append(y)
            labels.append(f"{regime} G={group}  {arm}")
            y -= 1
        y -= 0.5
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(ticks, labels, fontsize=6)
    ax.set_xlabel("final accuracy: TAPO arm − its base arm (paired over seeds, 95 % CI)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(plt, fig, path)


def _correctable_plot(cells, path: Path) -> Path:
    plt = _pyplot()
    groups = sorted({g for _, g in _settings(cells)}, reverse=True)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 2.8), dpi=80, squeeze=False)
    for j, group in enumerate(groups):
        ax = axes[0][j]
        for regime in REGIMES:
            cell = _find(cells, regime, group, STUDY_LR, "grpo")
            if cell is None:
                continue
            window = 10
            rates = [correctable_rate(cell, slice(t, t + window)) for t in range(0, len(cell["tapo_steps"]), window)]
            ax.plot([t + window for t in range(0, len(cell["tapo_steps"]), window)], rates, label=regime, lw=1.2)
        ax.set_title(f"correctable failing trajectories under GRPO, G={group}", fontsize=8)
        ax.set_xlabel("RL step (10-step windows, pooled over seeds)", fontsize=7)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    return _save(plt, fig, path)


def plot_all(cells: dict[str, dict], out: Path) -> list[Path]:
    """The study's figures in `out`: accuracy and call-rate curves (95 % bands), β/ablation curves, paired
    differences, correctable rate over steps."""
    out.mkdir(parents=True, exist_ok=True)
    by_loss = {}
    for arm in ("grpo", "grpo+tapo", "sapo", "sapo+tapo", "gspo_token", "gspo_token+tapo"):
        by_loss[arm] = (_LOSS_COLOURS[ARMS[arm].loss], "-" if ARMS[arm].tapo is not None else "--")
    ablation = {arm: (colour, "--" if arm == "grpo" else "-") for arm, colour in _ABLATION_COLOURS.items()}
    return [
        _grid_plot(cells, "accuracy_curve", by_loss, "accuracy (exact, T=1)", out / "sim_accuracy.png"),
        _grid_plot(cells, "call_rate_curve", by_loss, "tool-call rate", out / "sim_call_rate.png"),
        _grid_plot(cells, "accuracy_curve", ablation, "accuracy (exact, T=1)", out / "sim_ablations.png"),
        _differences_plot(cells, out / "sim_differences.png"),
        _correctable_plot(cells, out / "sim_correctable.png"),
    ]


def markdown(cells: dict[str, dict], header: str, figures: Sequence[Path]) -> str:
    """The report: the main GRPO vs GRPO + TAPO table, every TAPO arm against its base, correctable rates, the lr
    sensitivity check and the figures."""
    parts = [
        header,
        "## GRPO vs GRPO + TAPO (β 0.8)\n",
        "Bold: the 95 % CI excludes 0. Accuracy is the policy's exact expected accuracy at temperature 1 (no "
        "evaluation noise); 'mean acc over run' averages it over the recorded steps (higher = learned sooner).\n",
        main_table(cells),
        "\n## Every TAPO arm minus its base arm: final accuracy\n",
        arms_table(cells, "final_accuracy"),
        "\n## Every TAPO arm minus its base arm: accuracy averaged over the run\n",
        arms_table(cells, "mean_accuracy"),
        "\n## Every TAPO arm minus its base arm: final tool-call rate\n",
        arms_table(cells, "final_call_rate"),
        "\n## Correctable misassignment under the base algorithms (TAPO's own rule, pooled over steps and seeds)\n",
        correctable_table(cells),
    ]
    sensitivity = sensitivity_table(cells)
    if sensitivity.count("\n") > 1:
        parts += ["\n## Learning-rate sensitivity\n", sensitivity]
    parts += [
        "\n## Figures\n",
        "\n\n".join(f"![{path.stem}]({path.name})" for path in figures),
    ]
    return "\n".join(parts) + "\n"
