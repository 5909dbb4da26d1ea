"""Side-by-side curves of several runs: one PNG per metric and a markdown summary table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openrlhf_tapo.eval.runs import METRICS, Metric, RunMetrics, Series


@dataclass(frozen=True)
class CurveSummary:
    """A curve reduced to the numbers a table can show."""

    key: str
    points: int
    first: float
    last: float
    best: float
    tail_mean: float  # mean over the last `tail` fraction of points (smooths a noisy last step)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over `window` points (window 1 returns the values)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def summarize_curve(key: str, series: Series, tail: float = 0.1) -> CurveSummary:
    values = [v for _, v in series]
    n_tail = max(1, round(len(values) * tail))
    return CurveSummary(
        key=key,
        points=len(values),
        first=values[0],
        last=values[-1],
        best=max(values),
        tail_mean=sum(values[-n_tail:]) / n_tail,
    )


def summarize(runs: list[RunMetrics], metrics: tuple[Metric, ...] = METRICS) -> dict[str, dict[str, CurveSummary]]:
    """metric name -> run name -> summary, for the metrics at least one run has."""
    table: dict[str, dict[str, CurveSummary]] = {}
    for metric in metrics:
        for run in runs:
            key = run.resolve(metric)
            if key is not None:
                table.setdefault(metric.name, {})[run.name] = summarize_curve(key, run.series[key])
    return table


def plot_metric(metric: Metric, runs: list[RunMetrics], out: Path, smoothing: int = 1) -> Path | None:
    """One PNG with this metric's curve for every run that has it; None when no run does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(run.name, run.resolve(metric), run) for run in runs]
    curves = [(name, key, run) for name, key, run in curves if key is not None]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5.0, 3.2), dpi=80)
    for name, key, run in curves:
        steps = [s for s, _ in run.series[key]]
        values = smooth([v for _, v in run.series[key]], smoothing)
        ax.plot(steps, values, label=f"{name} ({key})" if len({k for _, k, _ in curves}) > 1 else name, lw=1.4)
    ax.set_title(metric.title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{metric.name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown_summary(runs: list[RunMetrics], table: dict[str, dict[str, CurveSummary]], plots: dict[str, Path]) -> str:
    lines = ["# Run comparison", "", "| run | path | sources |", "|---|---|---|"]
    for run in runs:
        lines.append(f"| {run.name} | `{run.path}` | {', '.join(run.sources)} |")
    for metric in METRICS:
        if metric.name not in table:
            continue
        lines += ["", f"## {metric.title}", ""]
        if metric.name in plots:
            lines += [f"![{metric.title}]({plots[metric.name].name})", ""]
        lines += ["| run | key | points | first | last | best | mean of last 10% |", "|---|---|---|---|---|---|---|"]
        for run in runs:
            s = table[metric.name].get(run.name)
            if s is None:
                lines.append(f"| {run.name} | (not logged) | | | | | |")
            else:
                lines.append(
                    f"| {run.name} | `{s.key}` | {s.points} | {s.first:.4g} | {s.last:.4g} | {s.best:.4g} "
                    f"| {s.tail_mean:.4g} |"
                )
    missing = [m.title for m in METRICS if m.name not in table]
    if missing:
        lines += ["", f"Not logged by any run: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def compare_runs(runs: list[RunMetrics], out: Path, smoothing: int = 1) -> tuple[dict[str, Path], Path]:
    """Write `<metric>.png` for every metric some run has, plus `summary.md`; return (plots, summary path)."""
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    for metric in METRICS:
        path = plot_metric(metric, runs, out, smoothing)
        if path is not None:
            plots[metric.name] = path
    summary = out / "summary.md"
    summary.write_text(markdown_summary(runs, summarize(runs), plots), encoding="utf-8")
    return plots, summary
