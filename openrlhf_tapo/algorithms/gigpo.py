"""GiGPO (Group-in-Group Policy Optimization, arXiv 2505.10978): a step-level advantage added to the group one.

GRPO compares whole trajectories of one prompt. GiGPO also compares single steps: the turns of trajectories of the
same prompt group that act from the same **anchor state** form a step group, and each turn is credited with how
its discounted return compares with the others' in that group. Pure torch + stdlib, like `tapo.py`.

Definitions (B trajectories, T advantage columns; semantics of the paper and its authors' `core_gigpo.py`):
- Episode advantage: the caller's per-token advantages, OpenRLHF's group advantage of each trajectory (one value
  per trajectory, counted once in its group, broadcast to its action tokens).
- Turns: `Turn(traj, turn, span, state)` records, turn 0..n_i-1 of trajectory i, each with its half-open column
  span and the anchor state it acts from (`search_turns` builds them for a search agent).
- Step reward: the outcome reward r_i on the last turn of trajectory i, 0 on the others (the search agent's reward
  is sparse), so the step return is R_{i,t} = r_t + gamma * R_{i,t+1} = gamma^(n_i - 1 - t) * r_i.
- Step group: the turns with the same prompt group and the same anchor state (exact, hashed), or, with
  `similarity_threshold`, greedy clusters of states whose `difflib.SequenceMatcher` ratio to the cluster's first
  state is >= the threshold (the reference's option), within one prompt group.
- Step advantage: R - mean of the step group (`mean_norm`), divided by the group's std (unbiased) + epsilon under
  `mean_std_norm`. A step group of one gets exactly 0 (its mean is its own return).
- A = A_episode + omega * A_step on every action token of the turn's span; tokens outside every turn are unchanged.
  omega = 0 returns the advantages unchanged (bit for bit).

Statistics (python floats): turns, step_groups, step_group_size_mean, step_group_size_max, singleton_share (share of
turns whose step group has one member), mean_abs_step_advantage (over turns).
"""

from __future__ import annotations

import difflib
import json
import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from openrlhf_tapo.algorithms.config_fields import doc
from openrlhf_tapo.algorithms.gc_pause import cyclic_gc_paused
from openrlhf_tapo.algorithms.tapo import ToolCall, advantage_shape, per_trajectory
from openrlhf_tapo.algorithms.turns import MODES, Turn, add_on_turns, check_turns, group_normalised


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"gigpo.{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GiGPOConfig:
    """GiGPO options; each field maps 1:1 to the flag `--gigpo.<field>`, whose help text is the field's `help`."""

    omega: float = field(
        default=1.0,
        metadata=doc(
            "weight of the step advantage in A_episode + omega * A_step (the reference's step_advantage_w); "
            "0 leaves the group advantage unchanged"
        ),
    )
    gamma: float = field(
        default=0.95,
        metadata=doc("discount of the step return R_t = r_t + gamma * R_(t+1), in [0, 1]; the reference's default"),
    )
    mode: str = field(
        default="mean_norm",
        metadata=doc(
            "step-group normalisation: mean_norm (subtract the mean) or mean_std_norm (also divide by the "
            "unbiased std + epsilon)",
            choices=MODES,
        ),
    )
    epsilon: float = field(default=1e-6, metadata=doc("added to the std under mean_std_norm (> 0)"))
    similarity_threshold: float | None = field(
        default=None,
        metadata=doc(
            "None: anchor states match exactly; a value in (0, 1]: greedy clusters of states whose "
            "difflib ratio to the cluster's first state is >= it (the reference's search agents use 0.9)"
        ),
    )

    def __post_init__(self) -> None:
        if _number("omega", self.omega) < 0:
            raise ValueError(f"gigpo.omega must be >= 0 (0 disables the step term), got {self.omega!r}")
        if not 0 <= _number("gamma", self.gamma) <= 1:
            raise ValueError(f"gigpo.gamma must be in [0, 1], got {self.gamma!r}")
        if self.mode not in MODES:
            raise ValueError(f"gigpo.mode must be one of {MODES}, got {self.mode!r}")
        if _number("epsilon", self.epsilon) <= 0:
            raise ValueError(f"gigpo.epsilon must be > 0, got {self.epsilon!r}")
        if (
            self.similarity_threshold is not None
            and not 0 < _number("similarity_threshold", self.similarity_threshold) <= 1
        ):
            raise ValueError(
                f"gigpo.similarity_threshold must be None (exact) or in (0, 1], got {self.similarity_threshold!r}"
            )


@cyclic_gc_paused()
def search_turns(turn_spans: Sequence[Sequence[tuple[int, int]]], calls: Sequence[ToolCall]) -> list[Turn]:
    """Every turn of a batch of search-agent trajectories with its anchor state.

    `turn_spans[i]` are trajectory i's assistant turns in order (half-open column ranges), `calls` its tool calls.
    The state before turn t of trajectory i is what the agent has learned from its tools so far: the (tool,
    canonical parameters, observation) of each call of turns < t that returned (`succeeded`), in call order. Why
    this key: the prompt is shared by the whole group, so the information acquired is what distinguishes the
    situations a turn acts from; the agent's own free text is left out, since two samples almost never write it
    alike and every state would be a singleton; a failed or malformed call returned no information and leaves the
    state as it was (as an invalid action does in the reference's environments)."""
    by_traj: dict[int, list[ToolCall]] = {}
    for call in calls:
        by_traj.setdefault(call.traj, []).append(call)
    turns = []
    for traj, spans in enumerate(turn_spans):
        made = sorted(by_traj.get(traj, ()), key=lambda call: (call.turn, call.call_span))
        state: tuple = ()
        k = 0
        for turn, span in enumerate(spans):
            while k < len(made) and made[k].turn < turn:
                call = made[k]
                if call.succeeded:
                    params = json.dumps(call.params, sort_keys=True, ensure_ascii=False, default=str)
                    state = (*state, (call.tool, params, call.observation))
                k += 1
            turns.append(Turn(traj, turn, tuple(span), state))
    return turns


def _state_text(state: Hashable) -> str:
    return state if isinstance(state, str) else repr(state)


def step_groups(group_ids: Sequence[Hashable], turns: Sequence[Turn], threshold: float | None) -> list[int]:
    """Step-group index of each turn: same prompt group and same anchor state (exact, or greedy clusters at a
    difflib ratio >= threshold against each cluster's first state, in turn order)."""
    index_of: dict[tuple, int] = {}
    clusters: dict[Hashable, list[tuple[str, int]]] = {}  # prompt group -> (first state's text, step group)
    out: list[int] = []
    count = 0
    for turn in turns:
        group = group_ids[turn.traj]
        key = (group, turn.state)
        index = index_of.get(key)
        if index is None and threshold is not None:
            text = _state_text(turn.state)
            matcher = difflib.SequenceMatcher(None, b=text, autojunk=False)
            for rep, candidate in clusters.get(group, ()):
                matcher.set_seq1(rep)
                if matcher.ratio() >= threshold:
                    index = candidate
                    break
            else:
                clusters.setdefault(group, []).append((text, count))
        if index is None:
            index, count = count, count + 1
        index_of[key] = index
        out.append(index)
    return out


@cyclic_gc_paused()
def gigpo_advantages(
    advantages: Tensor,
    action_mask: Tensor,
    group_ids: Sequence[Hashable] | Tensor,
    rewards: Sequence[float] | Tensor,
    turns: Sequence[Turn],
    config: GiGPOConfig,
) -> tuple[Tensor, dict[str, float]]:
    """GiGPO copy of `advantages` [B, T] (episode advantages in, A_episode + omega * A_step out) and its statistics.

    `rewards` [B] are the outcome rewards the group advantages were computed from; `turns` every assistant turn of
    every trajectory (see the module docstring). The input is untouched."""
    batch, width = advantage_shape(advantages, action_mask)
    group_ids = per_trajectory(group_ids, "group_ids", batch)
    rewards = [float(r) for r in per_trajectory(rewards, "rewards", batch)]
    counts = check_turns(turns, batch, width)

    returns = [config.gamma ** (counts[t.traj] - 1 - t.turn) * rewards[t.traj] for t in turns]
    groups = step_groups(group_ids, turns, config.similarity_threshold)
    steps = group_normalised(returns, groups, config.mode, config.epsilon)

    corrected = add_on_turns(advantages, action_mask, turns, steps, config.omega)
    sizes = Counter(groups)
    stats = {
        "turns": float(len(turns)),
        "step_groups": float(len(sizes)),
        "step_group_size_mean": len(turns) / len(sizes) if sizes else 0.0,
        "step_group_size_max": float(max(sizes.values(), default=0)),
        "singleton_share": sum(sizes[g] == 1 for g in groups) / len(groups) if groups else 0.0,
        "mean_abs_step_advantage": math.fsum(map(abs, steps)) / len(steps) if steps else 0.0,
    }
    return corrected, stats
