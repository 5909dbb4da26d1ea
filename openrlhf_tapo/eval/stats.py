"""Means with Student-t confidence intervals, for results over a handful of seeds (stdlib only, no scipy)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (possibly fractional) degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of `t_cdf` by bisection (|t| < 1e4 covers every df >= 1 at p in [1e-6, 1 - 1e-6])."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"t_quantile: df must be > 0, got {df}")
    lo, hi = -1e4, 1e4
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class MeanCI:
    """Mean of n samples with a two-sided confidence interval (Student t; width 0 when n == 1 is unknown: nan)."""

    mean: float
    low: float
    high: float
    n: int
    std: float  # sample standard deviation (n - 1)
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def fmt(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"{self.mean:.{digits}f} (n={self.n}, no CI)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(samples: Sequence[float], level: float = 0.95) -> MeanCI:
    """Mean and Student-t interval mean ± t_{(1+level)/2, n-1} · s / sqrt(n)."""
    values = [float(v) for v in samples]
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci: no samples")
    mean = sum(values) / n
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1, math.nan, level)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile((1.0 + level) / 2.0, n - 1) * std / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, std, level)


def signed(ci: MeanCI) -> str:
    """A difference as `+m [low, high]`, bold when the interval excludes 0 (`+m (n=1)` without an interval)."""
    if ci.n < 2:
        return f"{ci.mean:+.3f} (n={ci.n})"
    mark = "**" if ci.low > 0 or ci.high < 0 else ""
    return f"{mark}{ci.mean:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]{mark}"


def band(curves: Sequence[Sequence[float | None]]) -> tuple[list[float], list[float], list[float]]:
    """Per step over `curves` (one per seed, cut to the shortest): mean and 95 % t band. None marks a step where a
    curve has no value (e.g. a rate whose denominator was 0) and is left out there; a step with one value has a
    band of width 0, one with none is nan."""
    mean, low, high = [], [], []
    for t in range(min(len(c) for c in curves) if curves else 0):
        values = [c[t] for c in curves if c[t] is not None]
        if not values:
            for series in (mean, low, high):
                series.append(math.nan)
            continue
        ci = mean_ci(values)
        mean.append(ci.mean)
        low.append(ci.low if ci.n > 1 else ci.mean)
        high.append(ci.high if ci.n > 1 else ci.mean)
    return mean, low, high


def paired_ci(before: Sequence[float], after: Sequence[float], level: float = 0.95) -> MeanCI:
    """Mean of the paired differences after - before (one pair per question, same sampling seeds) with its t
    interval over the pairs: the gain of one run with the eval's own sampling error."""
    if len(before) != len(after):
        raise ValueError(f"paired_ci: {len(before)} 'before' and {len(after)} 'after' values; pair them one to one")
    return mean_ci([a - b for a, b in zip(after, before, strict=True)], level)


def _interval(mean: float, parts: Sequence[tuple[float, int]], n: int, level: float) -> MeanCI:
    """mean ± t · sqrt(sum of variances), with Welch-Satterthwaite degrees of freedom from (variance, dof) parts."""
    var = sum(v for v, _ in parts)
    dof_den = sum(v * v / d for v, d in parts if v > 0)
    dof = var * var / dof_den if dof_den > 0 else float(min(d for _, d in parts))
    half = t_quantile((1.0 + level) / 2.0, dof) * math.sqrt(var)
    return MeanCI(mean, mean - half, mean + half, n, math.sqrt(var), level)


def expected_gain(
    before: Sequence[float], afters: Sequence[Sequence[float]], level: float = 0.95
) -> tuple[MeanCI, MeanCI]:
    """The expected gain of a training recipe over several runs (RL seeds), each evaluated after training on the
    questions and sampling seeds of one shared `before` evaluation (`before[q]`, `afters[s][q]`: mean score per
    question).

    Returns (expected, one_run): the mean gain with an interval for the expected gain, and the same mean with an
    interval for the gain of one new run. Both intervals add two variance components, with Welch-Satterthwaite
    degrees of freedom: the spread between runs (seed gains g_s, s_g^2 / S; one new run: s_g^2 (1 + 1/S)) and the
    spread between questions of the seed-averaged paired differences d_q (s_d^2 / Q), which holds the eval's own
    sampling error of both "before" and "after". (Under a seed + question + noise model the noise term is counted
    in both: the interval errs wide.) `std` of the result is its standard error."""
    runs, questions = len(afters), len(before)
    if runs < 2 or questions < 2:
        raise ValueError(f"expected_gain: needs >= 2 runs and >= 2 questions, got {runs} runs, {questions} questions")
    if any(len(a) != questions for a in afters):
        raise ValueError(f"expected_gain: every run needs one 'after' value per question ({questions})")
    gains = [mean_ci([a - b for a, b in zip(after, before, strict=True)]).mean for after in afters]
    diffs = [sum(after[q] for after in afters) / runs - before[q] for q in range(questions)]
    seeds, per_question = mean_ci(gains), mean_ci(diffs)
    mean = seeds.mean
    question_part = (per_question.std**2 / questions, questions - 1)
    expected = _interval(mean, [(seeds.std**2 / runs, runs - 1), question_part], runs, level)
    one_run = _interval(mean, [(seeds.std**2 * (1 + 1 / runs), runs - 1), question_part], runs, level)
    return expected, one_run
