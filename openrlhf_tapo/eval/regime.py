"""Is TAPO likely to matter on a task? The signals of a short GRPO run and their plain-words reading.

The mechanism study (docs/results.md §1, parts 1 and 2) found what predicts TAPO's gain over GRPO:

- **the tool-call rate under GRPO**: TAPO gained most where GRPO pushed useful calls down while the answer step was
  still learning (regimes a and d: +0.02 to +0.09 final accuracy), little where calls were already saturated
  (regime b, call rate 0.95 -> 0.98: +0.01 to +0.02; the bundled task sits there, §3), and nothing, or a small loss,
  where the tool is useless and GRPO is right to drop it (control c: call rate 0.03, correctable rate 0.02);
- **the correctable rate** (TAPO's own rule: failing trajectories holding a call that a successful trajectory of the
  group also made) is what TAPO can act on at all, but a high rate alone does not predict a gain: it was highest in
  the saturated regime b (0.47), where the gain was small, and 0.10 in regime d, where the gain was largest;
- **where the failures are** (agent/failures.py, docs/step_credit.md): TAPO only moves the credit of call turns, so
  failures in the answer step (`wrong_answer`, `no_answer`) are out of its reach; GiGPO or the turn reward target
  those.

`signals` turns the per-step metrics of a GRPO run (with the TAPO stage at beta 0: it measures and corrects nothing)
into those numbers, and `read_regime` reads them with the thresholds below, each taken from the study. Both are pure
functions of numbers (no model, no files); runners/regime_run.py runs the steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from openrlhf_tapo.agent.failures import FAILURE_KINDS
from openrlhf_tapo.eval.stats import t_quantile

# The thresholds of the reading, each from the mechanism study (docs/results.md §1) or the bundled task (§3).
# Final call rate at or above which calls are saturated: regime b ran at 0.95 -> 0.98, the bundled task 0.85 -> 0.98.
SATURATED_CALL_RATE = 0.9
# Call rate below which the policy hardly calls: the useless-tool control (c) settled at 0.03.
RARE_CALL_RATE = 0.1
# Correctable rate (failing trajectories) from which TAPO has calls to credit: regime d gained most at 0.10 (G = 8),
# the useless-tool control, where TAPO cost a little, had 0.02.
MIN_CORRECTABLE = 0.1
# Share of failures in the answer step above which they are "most" failures (TAPO never touches that step).
MAJORITY = 0.5
# Below these the run holds too little contrast to read: TAPO needs groups with a success and a failure.
MIN_FAILING_TRAJECTORIES = 8
MIN_MIXED_GROUP_SHARE = 0.1

ANSWER_STEP_KINDS = ("wrong_answer", "no_answer")
THRESHOLDS = {
    "saturated_call_rate": SATURATED_CALL_RATE,
    "rare_call_rate": RARE_CALL_RATE,
    "min_correctable": MIN_CORRECTABLE,
    "majority": MAJORITY,
    "min_failing_trajectories": MIN_FAILING_TRAJECTORIES,
    "min_mixed_group_share": MIN_MIXED_GROUP_SHARE,
}


@dataclass(frozen=True)
class Trend:
    """A per-step series' least-squares slope (per step) with its 95 % t interval (n - 2 degrees of freedom; nan
    with fewer than 3 steps), and the means of its first and last halves (the middle step of an odd count in
    neither)."""

    slope: float
    low: float
    high: float
    first_half: float
    last_half: float
    steps: int

    @property
    def direction(self) -> str:
        """`falling` / `rising` when the interval excludes 0, else `flat` (also without an interval)."""
        if self.high < 0:
            return "falling"
        if self.low > 0:
            return "rising"
        return "flat"


def trend(values: Sequence[float], level: float = 0.95) -> Trend:
    """The least-squares line through (step, value) for steps 1..n, with the slope's t interval."""
    n = len(values)
    if n < 2:
        raise ValueError(f"trend: needs at least 2 steps, got {n}; run more --steps")
    xs = range(1, n + 1)
    x_mean, y_mean = (n + 1) / 2, sum(values) / n
    sxx = sum((x - x_mean) ** 2 for x in xs)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, values, strict=True)) / sxx
    half = n // 2
    first, last = sum(values[:half]) / half, sum(values[n - half :]) / half
    if n < 3:
        return Trend(slope, math.nan, math.nan, first, last, n)
    residuals = [y - (y_mean + slope * (x - x_mean)) for x, y in zip(xs, values, strict=True)]
    se = math.sqrt(sum(r * r for r in residuals) / (n - 2) / sxx)
    width = t_quantile((1 + level) / 2, n - 2) * se
    return Trend(slope, slope - width, slope + width, first, last, n)


@dataclass(frozen=True)
class Signals:
    """What the reading looks at, pooled over the run's steps.

    call_rate: the trend of the share of trajectories that attempt a tool call. failing_trajectories: TAPO's failing
    trajectories (not successful, negative GRPO advantage: a failure in a group that also did better); correctable:
    the share of them TAPO's rule finds correctable. failure_shares: first error kind -> its share of ALL failing
    trajectories (agent/failures.py; sums to 1 when any failed). mixed_group_share: GRPO groups whose rewards differ
    (the only groups GRPO, and TAPO, learn from). accuracy: mean score."""

    call_rate: Trend
    correctable: float
    failure_shares: dict[str, float]
    failing_trajectories: int
    mixed_group_share: float
    accuracy: float

    @property
    def answer_step_share(self) -> float:
        return sum(self.failure_shares.get(kind, 0.0) for kind in ANSWER_STEP_KINDS)

    def to_json(self) -> dict:
        out = asdict(self)
        out["call_rate"]["direction"] = self.call_rate.direction
        out["answer_step_share"] = self.answer_step_share
        return out


def signals(steps: Sequence[dict]) -> Signals:
    """The signals of a run from its per-step records, each with `tool_call_rate`, `accuracy`, `failing` (TAPO's
    failing trajectories), `correctable` (their correctable share), `mixed_groups` (share of groups),
    `failure/<kind>` (share of the step's trajectories failing first that way). Steps are equally sized, so rates
    pool as plain means."""
    if not steps:
        raise ValueError("signals: no steps")
    failing = sum(s["failing"] for s in steps)
    by_kind = {kind: sum(s[f"failure/{kind}"] for s in steps) for kind in FAILURE_KINDS}
    total = sum(by_kind.values())
    return Signals(
        call_rate=trend([s["tool_call_rate"] for s in steps]),
        correctable=sum(s["correctable"] * s["failing"] for s in steps) / failing if failing else 0.0,
        failure_shares={kind: v / total if total else 0.0 for kind, v in by_kind.items()},
        failing_trajectories=int(round(failing)),
        mixed_group_share=sum(s["mixed_groups"] for s in steps) / len(steps),
        accuracy=sum(s["accuracy"] for s in steps) / len(steps),
    )


@dataclass(frozen=True)
class Reading:
    """verdict: `likely` (TAPO is likely to matter), `small` (it may help a little), `unlikely`, or `cannot_tell`;
    lines: why, in plain words, with the numbers and the study's regime they match."""

    verdict: str
    lines: list[str]


def read_regime(s: Signals) -> Reading:
    """The plain-words reading of `s`, by these rules in this order (thresholds above):

    1. cannot_tell: fewer than MIN_FAILING_TRAJECTORIES failing trajectories, or fewer than MIN_MIXED_GROUP_SHARE of
       the groups with differing rewards: the run has too little contrast for GRPO or TAPO to act on.
    2. calls falling (the slope's 95 % interval below 0): `likely` when the correctable rate is at least
       MIN_CORRECTABLE (regimes a, d), else `unlikely` (the useless-tool control c: GRPO may be right to drop it).
    3. calls saturated (last-half call rate >= SATURATED_CALL_RATE): `small` (regime b, the bundled task), or
       `unlikely` when at least MAJORITY of the failures are in the answer step, which TAPO never touches.
    4. calls rare (last-half call rate < RARE_CALL_RATE) and not rising: `unlikely` (nothing to match).
    5. otherwise `cannot_tell`: GRPO neither pushes calls down nor saturates them within the run.

    Then, whatever the verdict: when the answer step (`wrong_answer` + `no_answer`) holds at least MAJORITY of the
    failures, a line says TAPO cannot reach them and names the step-level estimators; when malformed calls do, a line
    says TAPO only credits calls that parse (regime d).
    """
    rate = s.call_rate
    numbers = (
        f"tool-call rate {rate.first_half:.2f} -> {rate.last_half:.2f} (first -> last half of the steps), slope "
        f"{rate.slope:+.3f}/step [95 % CI {rate.low:+.3f}, {rate.high:+.3f}]; correctable {s.correctable:.2f} of "
        f"{s.failing_trajectories} failing trajectories; groups with differing rewards {s.mixed_group_share:.2f}; "
        f"accuracy {s.accuracy:.2f}"
    )
    lines = [numbers]
    if s.failing_trajectories < MIN_FAILING_TRAJECTORIES or s.mixed_group_share < MIN_MIXED_GROUP_SHARE:
        verdict = "cannot_tell"
        lines.append(
            f"Too little contrast to read: {s.failing_trajectories} failing trajectories (needs "
            f">= {MIN_FAILING_TRAJECTORIES}) and {s.mixed_group_share:.2f} of the groups with both better and worse "
            f"rollouts (needs >= {MIN_MIXED_GROUP_SHARE}). GRPO and TAPO learn only from such groups: start from a "
            "policy that solves some of these prompts (a warm start), or give prompts it can sometimes solve."
        )
    elif rate.direction == "falling":
        if s.correctable >= MIN_CORRECTABLE:
            verdict = "likely"
            lines.append(
                "Calls are falling under GRPO and failing trajectories hold calls that a success of their group also "
                f"made (correctable {s.correctable:.2f} >= {MIN_CORRECTABLE}): GRPO is pushing useful calls down. "
                "TAPO is likely to matter: this is where it gained most in the mechanism study (regimes a and d, "
                "+0.02 to +0.09 final accuracy)."
            )
        else:
            verdict = "unlikely"
            lines.append(
                f"Calls are falling under GRPO, but few failing trajectories hold a call a success made (correctable "
                f"{s.correctable:.2f} < {MIN_CORRECTABLE}): the tool may not be worth calling here, and GRPO may be "
                "right to drop it. TAPO is unlikely to help (the study's useless-tool control: no gain, -0.002)."
            )
    elif rate.last_half >= SATURATED_CALL_RATE:
        verdict = "unlikely" if s.answer_step_share >= MAJORITY else "small"
        lines.append(
            f"Calls saturate (last-half call rate {rate.last_half:.2f} >= {SATURATED_CALL_RATE}): GRPO already "
            "rewards calling, so TAPO has few useful calls to protect. Expect a small gain at most (the study's "
            "saturated regime b: +0.01 to +0.02; the bundled task: +0.017 [-0.003, +0.037])"
            + (", and less where the failures are in the answer step (below)." if verdict == "unlikely" else ".")
        )
    elif rate.last_half < RARE_CALL_RATE and rate.direction != "rising":
        verdict = "unlikely"
        lines.append(
            f"The policy hardly calls tools (last-half call rate {rate.last_half:.2f} < {RARE_CALL_RATE}): TAPO only "
            "credits calls, and there are few to credit. Check that the tools are reachable and the prompt says how "
            "to call them."
        )
    else:
        verdict = "cannot_tell"
        lines.append(
            f"Within {rate.steps} steps GRPO neither pushes calls down nor saturates them (call rate "
            f"{rate.direction}). TAPO may speed learning a little; run more --steps to see where the call rate goes."
        )
    if s.answer_step_share >= MAJORITY:
        lines.append(
            f"Most failures are in the answer step ({s.answer_step_share:.2f} of them: an observation held the answer "
            "and the final answer was wrong or missing). TAPO never changes the answer turn's credit. A step-level "
            "estimator (--gigpo.enable, --turn_reward.enable; docs/step_credit.md) reaches it only where failing "
            "trajectories reach different states before answering: on the bundled task, where they do not, neither "
            "helped and the turn reward cost accuracy (docs/results.md §7)."
        )
    if s.failure_shares.get("malformed_call", 0.0) >= MAJORITY:
        lines.append(
            f"Most failures start with a malformed call ({s.failure_shares['malformed_call']:.2f}). TAPO can only "
            "match calls that parse; it still gained most in the study's weak-format regime (d) by protecting the "
            "well-formed ones, but a warm start on the call format comes first."
        )
    return Reading(verdict, lines)
