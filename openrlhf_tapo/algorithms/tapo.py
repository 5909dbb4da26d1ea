"""TAPO (Tool-Aware Policy Optimization) credit transfer on per-token advantages.

Group RL (GRPO/GSPO/SAPO) gives every token of a trajectory the same outcome advantage, so a good tool call in a
failing trajectory is penalised like a useless one. TAPO moves part of the credit that successful trajectories
earned for an equivalent call onto that call. Pure torch + stdlib: the OpenRLHF adapter, other trainers and
offline analysis call the same functions. See docs/tapo.md for the full description.

Definitions (B trajectories, T advantage columns):
- Trajectory advantage A_i = masked mean of advantages[i] over action_mask[i] (0 when the mask is empty). With
  group-normalised outcome advantages every action token carries A_i, so this is exactly A_i.
- Success: the caller's flag (score >= TAPOConfig.success_threshold). Failing: not successful AND A_i < 0.
- Scope of trajectory i: its group (`scope="group"`) or the whole batch (`scope="batch"`). Tools whose similarity
  is `prompt_local` (image refs such as img_0 name different images in different prompts) always use the group.
- Reference group g: the calls of successful trajectories in one scope with the same tool and the same
  equivalence key (`similarity.key(params)`, hashed). A call whose execution failed (`ToolCall.succeeded` False) is
  in no group and is never matched. Support c_g = (# successful trajectories in scope with a
  call in g) / (# successful trajectories in scope); reference advantage Ā_g = mean A_j over those trajectories.
  With `turn_window` / `obs_check` only witness calls passing those checks count (c_g and Ā_g are then computed
  for each failing call from the witnesses that qualify for it).
- Match of a failing call k: m_k = max over groups g (same scope, same tool, >= 1 qualifying witness) of
  sim(p_k, p_g); ties go to the larger c_g, then the larger Ā_g. The exact key is a dict lookup (m = 1); fuzzy
  groups are found through the similarity's blocks (inverted index), only within the scope and tool, leaving out
  blocks shared by more than MAX_BLOCK_GROUPS groups (stop words: the cost stays linear in the calls).
- Correctable: m_k >= theta, i.e. a qualifying witness at similarity >= theta exists. A failing trajectory is
  correctable when one of its calls is.
- Gate and correction: a correctable call is corrected when confidence m_k * c_g >= alpha_min and the credit
  beta * m_k * c_g * Ā_g > 0 (c_g replaced by 1 when use_support=False). Every token t of the call's span
  (`span="turn"`: the whole assistant turn; `"call"`: the call tokens) with action_mask on and A_t < 0 becomes
  min(0, A_t + credit) (A_t + credit when clip_at_zero=False). A token covered by several corrected calls gets
  the largest credit. Everything else is returned unchanged.

Statistics (python floats, all present on every call; fractions are 0 when their denominator is 0):
- trajectories, successful_trajectories, failing_trajectories: counts.
- num_calls: tool calls given; calls_<tool>: calls per tool name; unkeyable_calls: calls the matcher read (those
  of successful and failing trajectories in scopes holding both) whose parameters the tool's similarity could not
  key (such a call is never matched); failed_calls: calls whose execution failed (`ToolCall.succeeded` False),
  never witnesses and never corrected; dropped_blocks: fuzzy blocks left out of the inverted index because more
  than MAX_BLOCK_GROUPS reference groups share them.
- failing_calls: calls made by failing trajectories.
- failing_traj_correctable_frac / failing_calls_correctable_frac: share of failing trajectories / failing calls
  that are correctable (the paper's "over half" numbers).
- failing_traj_corrected_frac / failing_calls_corrected_frac: the same after the confidence gate.
- corrected_calls: calls that passed the gate (their span received credit); corrected_tokens: tokens whose
  value changed.
- mean_match_similarity: mean m_k over correctable calls.
- mean_transferred_credit: mean credit (beta * m * c_g * Ā_g) over corrected calls.
- mean_advantage_change: mean A'_t - A_t over changed tokens.
- ref_groups: reference groups built (only in scopes that hold a failing trajectory, the only ones used);
  ref_group_size_mean / ref_group_size_max: successful trajectories per group; ref_group_support_mean: mean c_g.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from openrlhf_tapo.algorithms.config_fields import doc as _doc
from openrlhf_tapo.algorithms.gc_pause import cyclic_gc_paused
from openrlhf_tapo.algorithms.similarity import (
    FALLBACK_SIMILARITY,
    SIMILARITIES,
    Similarity,
    get_similarity,
    jaccard,
    normalize_text,
    text_tokens,
)

SCOPES = ("group", "batch")
SPANS = ("turn", "call")
OBS_CHECKS = ("off", "exact", "overlap")


@dataclass(frozen=True)
class ToolCall:
    """One tool call of one trajectory, located in the advantage tensor."""

    traj: int  # trajectory index in the batch (row of advantages)
    tool: str  # tool name, e.g. "text_search", "image_search", "zoom"
    params: Mapping[str, Any]  # canonical parameters (validated/normalised by the tools layer)
    call_span: tuple[int, int]  # half-open column range of the call's tokens in advantages/action_mask
    turn_span: tuple[int, int]  # half-open column range of the whole assistant turn that made the call
    turn: int  # 0-based assistant-turn index within the trajectory
    observation: str = ""  # text of the tool response that came back
    # False when the call's execution failed (its observation is the tools' error text): parameter determinism does
    # not hold for it, so it is never a witness and never receives credit.
    succeeded: bool = True


def _default_similarity() -> dict[str, str]:
    return {"text_search": "text_fuzzy", "image_search": "image", "zoom": "bbox_iou"}


@dataclass
class TAPOConfig:
    """TAPO options; each field maps 1:1 to the flag `--tapo.<field>`, whose help text is the field's `help`."""

    beta: float = field(
        default=0.8,
        metadata=_doc(
            "transfer strength in min(0, A + beta * m * c_g * Ā_g); the paper's best value; 0 disables TAPO"
        ),
    )
    theta: float = field(
        default=0.8,
        metadata=_doc(
            "similarity a witness call needs (m >= theta; > 0, a value > 1 disables TAPO). 0.8 keeps near-duplicates "
            "only: for text_fuzzy 4 of 5 shared tokens, for boxes an IoU of 0.8"
        ),
    )
    alpha_min: float = field(
        default=0.25,
        metadata=_doc(
            "confidence gate on m * c_g (>= 0). 0.25: at m = 1 at least a quarter of the successful trajectories in "
            "scope made the call; in a group of 8 with <= 4 successes one witness suffices. Lower it for "
            "scope=batch, whose support denominator is every successful trajectory of the batch"
        ),
    )
    scope: str = field(
        default="group",
        metadata=_doc(
            "where witnesses come from: group (trajectories of the same prompt) or batch (any prompt)", choices=SCOPES
        ),
    )
    span: str = field(
        default="turn",
        metadata=_doc(
            "tokens corrected: turn (the whole assistant turn that made the call) or call (its tokens)", choices=SPANS
        ),
    )
    turn_window: int | None = field(
        default=None,
        metadata=_doc("a witness call must be within this many turns of the failing call (|turn_w - turn_k| <= k)"),
    )
    obs_check: str = field(
        default="off",
        metadata=_doc(
            "witness's observation vs the failing call's: off, exact (equal after SQuAD normalisation) or overlap "
            "(token-set Jaccard >= obs_min_overlap); guards against same parameters, different information value",
            choices=OBS_CHECKS,
        ),
    )
    obs_min_overlap: float = field(default=0.5, metadata=_doc("threshold in [0, 1] for obs_check=overlap"))
    use_support: bool = field(
        default=True,
        metadata=_doc(
            "ablation: False drops c_g from the credit (beta * m * Ā_g); the gate still uses m * c_g", off="no_support"
        ),
    )
    clip_at_zero: bool = field(
        default=True,
        metadata=_doc("ablation: False drops the min(0, .): a corrected token may become positive", off="no_clip"),
    )
    success_threshold: float = field(
        default=1.0,
        metadata=_doc(
            "a trajectory succeeds when its score >= this (1.0 = a fully correct answer); used by callers building "
            "`success`, not by tapo_correct itself"
        ),
    )
    similarity: dict[str, str] = field(
        default_factory=_default_similarity,
        metadata=_doc("tool name -> similarity name (registry in similarity.py); tools not listed use exact_json"),
    )

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and what it accepts."""

        def number(name: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"tapo.{name} must be a finite number, got {value!r}")
            return float(value)

        if number("beta", self.beta) < 0:
            raise ValueError(f"tapo.beta must be >= 0 (0 disables TAPO), got {self.beta!r}")
        if number("theta", self.theta) <= 0:
            raise ValueError(f"tapo.theta must be > 0 (a value > 1 disables TAPO), got {self.theta!r}")
        if number("alpha_min", self.alpha_min) < 0:
            raise ValueError(f"tapo.alpha_min must be >= 0, got {self.alpha_min!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"tapo.scope must be one of {SCOPES}, got {self.scope!r}")
        if self.span not in SPANS:
            raise ValueError(f"tapo.span must be one of {SPANS}, got {self.span!r}")
        if self.turn_window is not None and (
            isinstance(self.turn_window, bool) or not isinstance(self.turn_window, int) or self.turn_window < 0
        ):
            raise ValueError(f"tapo.turn_window must be None (off) or an int >= 0, got {self.turn_window!r}")
        if self.obs_check not in OBS_CHECKS:
            raise ValueError(f"tapo.obs_check must be one of {OBS_CHECKS}, got {self.obs_check!r}")
        if not 0 <= number("obs_min_overlap", self.obs_min_overlap) <= 1:
            raise ValueError(f"tapo.obs_min_overlap must be in [0, 1], got {self.obs_min_overlap!r}")
        for name in ("use_support", "clip_at_zero"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"tapo.{name} must be True or False, got {getattr(self, name)!r}")
        number("success_threshold", self.success_threshold)
        if not isinstance(self.similarity, Mapping):
            raise ValueError(f"tapo.similarity must map tool name -> similarity name, got {self.similarity!r}")
        for tool, name in self.similarity.items():
            if not isinstance(tool, str) or not isinstance(name, str):
                raise ValueError(f"tapo.similarity must map str -> str, got {tool!r}: {name!r}")
            if name not in SIMILARITIES:
                raise ValueError(
                    f"tapo.similarity[{tool!r}] = {name!r} is not a registered similarity; "
                    f"choose from {', '.join(sorted(SIMILARITIES))}"
                )


def trajectory_advantages(advantages: Tensor, action_mask: Tensor) -> Tensor:
    """A_i: masked mean of each row of `advantages` over `action_mask` (0 for a row with no action token)."""
    # At least float32: a bf16 reduction over thousands of tokens would blur A_i.
    dtype = torch.promote_types(advantages.dtype, torch.float32)
    selected = action_mask.bool()
    # Selected, not multiplied: NaN * 0 is NaN, so a non-finite value in a masked column would poison A_i.
    values = torch.where(selected, advantages.to(dtype), torch.zeros((), dtype=dtype, device=advantages.device))
    return values.sum(-1) / selected.sum(-1).clamp(min=1).to(dtype)


@dataclass
class _RefGroup:
    key: Hashable
    trajs: set[int] = field(default_factory=set)
    witnesses: list[tuple[int, int, int]] = field(default_factory=list)  # (traj, turn, call index)
    support: float = 0.0
    ref_adv: float = 0.0


@dataclass
class _Match:
    similarity: float
    support: float
    ref_adv: float


# A fuzzy block (a query token, an image ref) shared by more reference groups than this, in one scope and tool, is
# dropped from the inverted index, like a stop word: it says little about which group a call matches, and under
# scope="batch" it is what makes matching quadratic (every call sharing it would be compared with every group
# holding it). Within one prompt group a block holds at most n_samples x turns groups (8 x 10 = 80 in the usual
# setup), so group-scope matching is unaffected; a fuzzy match is lost only when every block the two calls share is
# dropped (exact matches are hashed and never lost). Bounds the fuzzy comparisons of one call by this x its blocks.
MAX_BLOCK_GROUPS = 128

_WHOLE_BATCH = object()  # scope key of scope="batch" (a group id can be any hashable, None included)


class _Matcher:
    """Reference groups of one batch and the best match of a failing call; shared by every public entry point."""

    def __init__(self, calls, group_ids, success, failing, traj_adv, config: TAPOConfig):
        self.calls, self.traj_adv, self.config = calls, traj_adv, config
        self.group_ids, self.batch_scope = group_ids, config.scope == "batch"
        self.sims: dict[str, Similarity] = {}
        self.keys: list[Hashable | None] = [None] * len(calls)
        self.call_scopes: list[Hashable | None] = [None] * len(calls)
        self.unkeyable = 0
        self.fuzzy = config.theta < 1  # at theta = 1 only the exact group can match (similarity contract 1)
        self.filtered = config.turn_window is not None or config.obs_check != "off"
        self._obs_cache: dict[int, Any] = {}

        self.n_success: dict[Hashable, int] = {}
        failing_scopes = set()
        for i, group in enumerate(group_ids):
            for scope in (group, _WHOLE_BATCH):
                if success[i]:
                    self.n_success[scope] = self.n_success.get(scope, 0) + 1
                elif failing[i]:
                    failing_scopes.add(scope)
        self.active_scopes = failing_scopes & self.n_success.keys()

        self.groups: dict[tuple, _RefGroup] = {}
        self.block_index: dict[tuple, list[_RefGroup]] = {}
        for c, call in enumerate(calls):
            i = call.traj
            if not (success[i] or failing[i]) or not call.succeeded:
                continue
            sim = self.sims.get(call.tool)
            if sim is None:
                name = config.similarity.get(call.tool, FALLBACK_SIMILARITY)
                sim = self.sims[call.tool] = get_similarity(name)
            # Prompt-local parameters (image refs) are only comparable within one prompt, whatever the scope.
            scope = _WHOLE_BATCH if self.batch_scope and not sim.prompt_local else group_ids[i]
            if scope not in self.active_scopes:
                continue
            key = self.keys[c] = sim.key(call.params)
            if key is None:
                self.unkeyable += 1
                continue
            self.call_scopes[c] = scope
            if not success[i]:
                continue
            group = self.groups.get((scope, call.tool, key))
            if group is None:
                group = self.groups[(scope, call.tool, key)] = _RefGroup(key)
                if self.fuzzy and not sim.exact_only:
                    for block in sim.blocks(key, config.theta):
                        self.block_index.setdefault((scope, call.tool, block), []).append(group)
            group.trajs.add(i)
            group.witnesses.append((i, call.turn, c))
        crowded = [block for block, groups in self.block_index.items() if len(groups) > MAX_BLOCK_GROUPS]
        for block in crowded:
            del self.block_index[block]
        self.dropped_blocks = len(crowded)
        for (scope, _, _), group in self.groups.items():
            group.support, group.ref_adv = self._stats(group.trajs, scope)

    def _stats(self, trajs, scope) -> tuple[float, float]:
        # fsum: the reference advantage must not depend on the order of trajectories in the batch.
        return len(trajs) / self.n_success[scope], math.fsum(self.traj_adv[j] for j in trajs) / len(trajs)

    def _observation(self, c: int):
        obs = self._obs_cache.get(c)
        if obs is None:
            text = self.calls[c].observation
            obs = self._obs_cache[c] = normalize_text(text) if self.config.obs_check == "exact" else text_tokens(text)
        return obs

    def _same_information(self, witness: int, c: int) -> bool:
        if self.config.obs_check == "exact":
            return self._observation(witness) == self._observation(c)
        return jaccard(self._observation(witness), self._observation(c)) >= self.config.obs_min_overlap

    def _qualifying(self, group: _RefGroup, c: int, call: ToolCall, scope) -> tuple[float, float] | None:
        if not self.filtered:
            return group.support, group.ref_adv
        window, check = self.config.turn_window, self.config.obs_check
        trajs = set()
        for j, turn, w in group.witnesses:
            if j in trajs or (window is not None and abs(turn - call.turn) > window):
                continue
            if check != "off" and not self._same_information(w, c):
                continue
            trajs.add(j)
        return self._stats(trajs, scope) if trajs else None

    def best_match(self, c: int) -> _Match | None:
        """Best reference group for failing call `c` with similarity >= theta, or None (not correctable)."""
        call, key, scope = self.calls[c], self.keys[c], self.call_scopes[c]
        if key is None or self.config.theta > 1:  # a key is only set for a call in an active scope
            return None
        exact = self.groups.get((scope, call.tool, key))
        if exact is not None:
            stats = self._qualifying(exact, c, call, scope)
            if stats is not None:  # contract: only the exact group scores 1
                return _Match(1.0, *stats)
        if not self.fuzzy:
            return None
        sim = self.sims[call.tool]
        if sim.exact_only:
            return None
        best, seen = None, set()
        for block in sim.blocks(key, self.config.theta):
            for group in self.block_index.get((scope, call.tool, block), ()):
                if group is exact or id(group) in seen:
                    continue
                seen.add(id(group))
                m = sim.score_keys(key, group.key)
                if m < self.config.theta or (best is not None and m < best[0]):
                    continue
                stats = self._qualifying(group, c, call, scope)
                if stats is not None and (best is None or (m, *stats) > best):
                    best = (m, *stats)
        return None if best is None else _Match(*best)


def per_trajectory(values: Sequence | Tensor, name: str, size: int) -> list:
    out = values.tolist() if isinstance(values, Tensor) else list(values)
    if len(out) != size:
        raise ValueError(f"{name} has {len(out)} entries but the batch has {size} trajectories")
    return out


def advantage_shape(advantages: Tensor, action_mask: Tensor) -> tuple[int, int]:
    """(B, T) of the per-token advantages; ValueError unless `action_mask` has the same 2-D shape."""
    if advantages.dim() != 2 or action_mask.shape != advantages.shape:
        raise ValueError(
            f"advantages and action_mask must be [B, T] of one shape, got {tuple(advantages.shape)} "
            f"and {tuple(action_mask.shape)}"
        )
    return advantages.shape[0], advantages.shape[1]


def _check_calls(calls: Sequence[ToolCall], batch: int, width: int | None) -> None:
    """Every call's trajectory lies in the batch and, when `width` is given, its spans in [0, width]."""
    for c, call in enumerate(calls):
        if not 0 <= call.traj < batch:
            raise ValueError(f"calls[{c}].traj = {call.traj} is outside the batch [0, {batch})")
        for name in ("call_span", "turn_span") if width is not None else ():
            start, end = getattr(call, name)
            if not 0 <= start <= end <= width:
                raise ValueError(f"calls[{c}].{name} = {(start, end)} is not a half-open range inside [0, {width}]")


def _frac(num: int, den: int) -> float:
    return num / den if den else 0.0


def _base_stats(calls: Sequence[ToolCall], success: list[bool], failing: list[bool]) -> dict[str, float]:
    stats = {
        "trajectories": float(len(success)),
        "successful_trajectories": float(sum(success)),
        "failing_trajectories": float(sum(failing)),
        "num_calls": float(len(calls)),
        "failed_calls": float(sum(not call.succeeded for call in calls)),
    }
    for call in calls:
        stats[f"calls_{call.tool}"] = stats.get(f"calls_{call.tool}", 0.0) + 1.0
    return stats


def _match_failing_calls(calls, group_ids, success, failing, traj_adv, config):
    with cyclic_gc_paused():
        matcher = _Matcher(calls, group_ids, success, failing, traj_adv, config)
        failing_calls = [c for c, call in enumerate(calls) if failing[call.traj]]
        matches = {c: m for c in failing_calls if (m := matcher.best_match(c)) is not None}
    return matcher, failing_calls, matches


def correctable_rate(
    group_ids: Sequence[int] | Tensor,
    success: Sequence[bool] | Tensor,
    calls: Sequence[ToolCall],
    config: TAPOConfig | None = None,
) -> dict[str, float]:
    """Offline analysis without advantages: how much of the failure is correctable (same rule as tapo_correct).

    Failing = not successful. Returns failing_trajectories, failing_calls, failing_traj_correctable_frac and
    failing_calls_correctable_frac.
    """
    config = config or TAPOConfig()
    config.validate()
    group_ids = per_trajectory(group_ids, "group_ids", len(group_ids))
    success = [bool(s) for s in per_trajectory(success, "success", len(group_ids))]
    _check_calls(calls, len(group_ids), None)
    failing = [not s for s in success]
    _, failing_calls, matches = _match_failing_calls(calls, group_ids, success, failing, [0.0] * len(success), config)
    failing_trajs = sum(failing)
    return {
        "failing_trajectories": float(failing_trajs),
        "failing_calls": float(len(failing_calls)),
        "failing_traj_correctable_frac": _frac(len({calls[c].traj for c in matches}), failing_trajs),
        "failing_calls_correctable_frac": _frac(len(matches), len(failing_calls)),
    }


def tapo_correct(
    advantages: Tensor,
    action_mask: Tensor,
    group_ids: Sequence[int] | Tensor,
    success: Sequence[bool] | Tensor,
    calls: Sequence[ToolCall],
    config: TAPOConfig,
) -> tuple[Tensor, dict[str, float]]:
    """TAPO-corrected copy of `advantages` [B, T] and the statistics dict (see the module docstring).

    `action_mask` [B, T] (bool or 0/1) marks the action tokens; `group_ids` [B] the prompt of each trajectory;
    `success` [B] the success flags; `calls` the tool calls with spans in the same columns. The input is untouched.
    """
    config.validate()
    batch, width = advantage_shape(advantages, action_mask)
    success = [bool(s) for s in per_trajectory(success, "success", batch)]
    group_ids = per_trajectory(group_ids, "group_ids", batch)
    _check_calls(calls, batch, width)
    mask = action_mask.bool()
    traj_adv = trajectory_advantages(advantages, mask).tolist()
    failing = [not s and a < 0 for s, a in zip(success, traj_adv, strict=True)]

    matcher, failing_calls, matches = _match_failing_calls(calls, group_ids, success, failing, traj_adv, config)

    spans, credits = [], []
    for c, match in matches.items():
        support = match.support if config.use_support else 1.0
        credit = config.beta * match.similarity * support * match.ref_adv
        if match.similarity * match.support >= config.alpha_min and credit > 0:
            call = calls[c]
            start, end = call.turn_span if config.span == "turn" else call.call_span
            spans.append((call.traj, start, end, c))
            credits.append(credit)

    corrected = advantages.clone(memory_format=torch.contiguous_format)
    changed_tokens, change = 0, 0.0
    if spans:
        # Only the span tokens are touched (every span belongs to a failing trajectory): the cost beyond the copy is
        # linear in the corrected tokens, not in B x T.
        positions, credit = _span_credit(spans, credits, width)
        positions = positions.to(advantages.device)
        before = corrected.view(-1)[positions]
        after = before + credit.to(advantages.device, advantages.dtype)
        if config.clip_at_zero:
            after = after.clamp(max=0)
        after = torch.where(mask.reshape(-1)[positions] & (before < 0), after, before)
        corrected.view(-1)[positions] = after
        diff = after.double() - before.double()
        changed_tokens = int((diff != 0).sum())
        change = float(diff.sum())

    stats = _base_stats(calls, success, failing)
    failing_trajs = sum(failing)
    corrected_calls = [s[3] for s in spans]
    groups = list(matcher.groups.values())
    stats.update(
        unkeyable_calls=float(matcher.unkeyable),
        dropped_blocks=float(matcher.dropped_blocks),
        failing_calls=float(len(failing_calls)),
        failing_traj_correctable_frac=_frac(len({calls[c].traj for c in matches}), failing_trajs),
        failing_calls_correctable_frac=_frac(len(matches), len(failing_calls)),
        failing_traj_corrected_frac=_frac(len({calls[c].traj for c in corrected_calls}), failing_trajs),
        failing_calls_corrected_frac=_frac(len(corrected_calls), len(failing_calls)),
        corrected_calls=float(len(corrected_calls)),
        corrected_tokens=float(changed_tokens),
        mean_match_similarity=_frac(math.fsum(m.similarity for m in matches.values()), len(matches)),
        mean_transferred_credit=_frac(math.fsum(credits), len(credits)),
        mean_advantage_change=_frac(change, changed_tokens),
        ref_groups=float(len(groups)),
        ref_group_size_mean=_frac(sum(len(g.trajs) for g in groups), len(groups)),
        ref_group_size_max=float(max((len(g.trajs) for g in groups), default=0)),
        ref_group_support_mean=_frac(math.fsum(g.support for g in groups), len(groups)),
    )
    return corrected, stats


def _span_credit(spans, credits, width: int) -> tuple[Tensor, Tensor]:
    """Flat positions (row * width + column, unique) of the tokens the spans cover, and for each the largest credit
    of the spans covering it; built without a python loop over tokens."""
    rows = torch.tensor([s[0] for s in spans], dtype=torch.long)
    starts = torch.tensor([s[1] for s in spans], dtype=torch.long)
    lengths = torch.tensor([s[2] - s[1] for s in spans], dtype=torch.long)
    values = torch.tensor(credits, dtype=torch.float64)
    offsets = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(offsets, lengths)
    positions = torch.repeat_interleave(rows * width + starts, lengths) + within
    unique, inverse = torch.unique(positions, return_inverse=True)
    credit = torch.zeros(len(unique), dtype=torch.float64)
    credit.scatter_reduce_(0, inverse, torch.repeat_interleave(values, lengths), reduce="amax")
    return unique, credit
