"""Turn records of multi-turn trajectories and the group normalisation the step-level estimators share."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# How a value is compared with the others of its group: subtract the mean, or also divide by the unbiased std.
MODES = ("mean_norm", "mean_std_norm")


@dataclass(frozen=True)
class Turn:
    """One assistant turn of one trajectory, located in the advantage tensor."""

    traj: int  # trajectory index in the batch (row of advantages)
    turn: int  # 0-based assistant-turn index within the trajectory
    span: tuple[int, int]  # half-open column range of the turn's tokens
    state: Hashable = ()  # anchor state the turn acts from (equal states -> same step group within a prompt group)


def check_turns(turns: Sequence[Turn], batch: int, width: int) -> list[int]:
    """Validate the records; return each trajectory's turn count (turns 0..n-1 must all be present, once)."""
    seen: dict[int, set[int]] = {}
    for k, turn in enumerate(turns):
        if not 0 <= turn.traj < batch:
            raise ValueError(f"turns[{k}].traj = {turn.traj} is outside the batch [0, {batch})")
        start, end = turn.span
        if not 0 <= start <= end <= width:
            raise ValueError(f"turns[{k}].span = {turn.span} is not a half-open range inside [0, {width}]")
        indices = seen.setdefault(turn.traj, set())
        if turn.turn in indices:
            raise ValueError(f"turns[{k}]: trajectory {turn.traj} has turn {turn.turn} twice")
        indices.add(turn.turn)
    counts = [0] * batch
    for traj, indices in seen.items():
        if indices != set(range(len(indices))):
            raise ValueError(f"trajectory {traj} has turns {sorted(indices)}; expected 0..{len(indices) - 1}")
        counts[traj] = len(indices)
    return counts


def group_normalised(values: Sequence[float], group_ids: Sequence[Hashable], mode: str, epsilon: float) -> list[float]:
    """Each value minus its group's mean (divided by the unbiased std + epsilon under mean_std_norm); 0 in a group
    of one."""
    members: dict[Hashable, list[int]] = {}
    for i, group in enumerate(group_ids):
        members.setdefault(group, []).append(i)
    out = [0.0] * len(values)
    for ids in members.values():
        if len(ids) == 1:
            continue
        mean = math.fsum(values[i] for i in ids) / len(ids)
        scale = 1.0
        if mode == "mean_std_norm":
            scale = math.sqrt(math.fsum((values[i] - mean) ** 2 for i in ids) / (len(ids) - 1)) + epsilon
        for i in ids:
            out[i] = (values[i] - mean) / scale
    return out


def add_on_turns(
    advantages: Tensor, action_mask: Tensor, turns: Sequence[Turn], values: Sequence[float], weight: float
) -> Tensor:
    """Copy of `advantages` with weight * values[k] added to the action tokens of turns[k]'s span (computed in
    float64). Tokens of a turn whose value is 0, tokens outside every turn, and everything when weight is 0 are
    returned bit for bit. Turn spans of one trajectory do not overlap, so each token gets at most one value."""
    out = advantages.clone(memory_format=torch.contiguous_format)
    picked = [
        (turn, value) for turn, value in zip(turns, values, strict=True) if value != 0 and turn.span[1] > turn.span[0]
    ]
    if weight == 0 or not picked:
        return out
    width = advantages.shape[1]
    rows = torch.tensor([turn.traj for turn, _ in picked], dtype=torch.long)
    starts = torch.tensor([turn.span[0] for turn, _ in picked], dtype=torch.long)
    lengths = torch.tensor([turn.span[1] - turn.span[0] for turn, _ in picked], dtype=torch.long)
    offsets = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(offsets, lengths)
    positions = (torch.repeat_interleave(rows * width + starts, lengths) + within).to(advantages.device)
    term = torch.repeat_interleave(torch.tensor([v for _, v in picked], dtype=torch.float64), lengths)
    flat = out.view(-1)
    before = flat[positions]
    after = (before.double() + weight * term.to(advantages.device)).to(advantages.dtype)
    flat[positions] = torch.where(action_mask.reshape(-1)[positions].bool(), after, before)
    return out
