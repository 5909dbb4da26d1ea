"""The counts behind TAPO's batch statistics, for pooling over steps and runs.

`tapo_correct` publishes its shares as fractions (failing_traj_correctable_frac, ...), which are 0 when their
denominator is 0: averaging them over steps would count a step without any failing call as "nothing correctable".
Pooled rates are ratios of summed counts; a share's count is share x denominator (rounded: it is a whole number).
"""

from __future__ import annotations

from collections.abc import Mapping

# count -> the statistic it is, or (share, the share's denominator)
COUNTS = {
    "failing_trajectories": "failing_trajectories",
    "correctable_trajectories": ("failing_traj_correctable_frac", "failing_trajectories"),
    "failing_calls": "failing_calls",
    "correctable_calls": ("failing_calls_correctable_frac", "failing_calls"),
    "corrected_calls": "corrected_calls",
}


def stat_counts(stats: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    """The COUNTS of one batch's TAPO statistics; `prefix` "tapo/" reads them as the TAPO stage logs them. A missing
    statistic (a step without the stage) counts 0."""
    counts = {}
    for name, source in COUNTS.items():
        if isinstance(source, str):
            counts[name] = stats.get(prefix + source, 0.0)
        else:
            share, denominator = source
            counts[name] = round(stats.get(prefix + share, 0.0) * stats.get(prefix + denominator, 0.0))
    return counts
