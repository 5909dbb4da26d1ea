"""TAPO invariants on randomised batches (hypothesis): what must hold for every batch, option and call layout."""

import dataclasses
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_tapo.algorithms.tapo import TAPOConfig, ToolCall, tapo_correct, trajectory_advantages

WIDTH = 12
SETTINGS = settings(max_examples=60, deadline=None)

_params = {
    "text_search": st.sampled_from(["eiffel tower", "eiffel tower height", "tower eiffel", "paris"]).map(
        lambda q: {"query": q}
    ),
    "image_search": st.fixed_dictionaries(
        {"image": st.sampled_from(["img_0", "img_1"])},
        optional={"bbox": st.sampled_from([[0, 0, 500, 500], [0, 0, 500, 400], [100, 100, 900, 900]])},
    ),
    "zoom": st.fixed_dictionaries(
        {"image": st.just("img_0"), "bbox": st.sampled_from([[0, 0, 500, 500], [0, 0, 450, 500], [0, 0, 10, 10]])}
    ),
    "calculator": st.sampled_from([{"x": 1}, {"x": 2}]),
}


@st.composite
def _span(draw):
    start = draw(st.integers(0, WIDTH))
    return start, draw(st.integers(start, WIDTH))


@st.composite
def _call(draw, batch):
    tool = draw(st.sampled_from(["text_search", "text_search", "image_search", "zoom", "calculator"]))
    turn_span = draw(_span())
    call_start = draw(st.integers(*turn_span))
    return ToolCall(
        traj=draw(st.integers(0, batch - 1)),
        tool=tool,
        params=draw(_params[tool]),
        call_span=(call_start, draw(st.integers(call_start, turn_span[1]))),
        turn_span=turn_span,
        turn=draw(st.integers(0, 2)),
        observation=draw(st.sampled_from(["tower 330 m", "The tower: 330 m", "tower is 330 m"])),
    )


@st.composite
def batches(draw):
    n_groups, per_group = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    batch = n_groups * per_group
    # Groups mixing successes and failures are the interesting case: the first two rows of a group differ.
    success = [draw(st.booleans()) if i % per_group > 1 else i % per_group == 0 for i in range(batch)]
    # Mostly GRPO-like signs (successes above 0, failures below), with exceptions the code must handle too.
    base = [
        draw(st.sampled_from([1.5, 0.5, 0.25, 0.0, -0.5] if s else [-1.5, -0.5, -0.25, 0.0, 0.5])) for s in success
    ]
    advantages = torch.tensor(base).repeat_interleave(WIDTH).view(batch, WIDTH)
    if draw(st.booleans()):  # per-token noise: the invariants must not rely on constant rows
        noise = draw(st.lists(st.floats(-1, 1, width=32), min_size=batch * WIDTH, max_size=batch * WIDTH))
        advantages = advantages + torch.tensor(noise).view(batch, WIDTH)
    mask = torch.ones(batch, WIDTH, dtype=torch.bool)
    for row, col in draw(st.lists(st.tuples(st.integers(0, batch - 1), st.integers(0, WIDTH - 1)), max_size=WIDTH)):
        mask[row, col] = False
    calls = draw(st.lists(_call(batch), min_size=2 * batch, max_size=4 * batch))
    groups = [i // per_group for i in range(batch)]
    return advantages, mask, groups, success, calls


configs = st.builds(
    TAPOConfig,
    beta=st.sampled_from([0.3, 0.8, 2.0]),
    theta=st.sampled_from([0.5, 0.8, 1.0]),
    alpha_min=st.sampled_from([0.0, 0.1, 0.25]),
    scope=st.sampled_from(["group", "batch"]),
    span=st.sampled_from(["turn", "call"]),
    turn_window=st.sampled_from([None, None, 0, 1]),
    obs_check=st.sampled_from(["off", "off", "exact", "overlap"]),
    use_support=st.booleans(),
)


def _failing(advantages, mask, success):
    traj = trajectory_advantages(advantages, mask).tolist()
    return [not s and a < 0 for s, a in zip(success, traj, strict=True)]


@SETTINGS
@given(batches(), configs)
def test_only_negative_action_tokens_of_failing_call_spans_move_toward_zero(batch, config):
    advantages, mask, groups, success, calls = batch
    before = advantages.clone()
    out, stats = tapo_correct(advantages, mask, groups, success, calls, config)
    assert torch.equal(advantages, before)  # input untouched
    failing = _failing(advantages, mask, success)
    allowed = torch.zeros_like(mask)
    for call in calls:
        if failing[call.traj]:
            start, end = call.turn_span if config.span == "turn" else call.call_span
            allowed[call.traj, start:end] = True
    allowed &= mask & (advantages < 0)
    assert torch.equal(out[~allowed], advantages[~allowed])  # successes, non-failing rows, outside spans, masked
    assert torch.all(out >= advantages) and torch.all(out[allowed] <= 0)  # corrected values lie in [A, 0]
    changed = out != advantages
    assert stats["corrected_tokens"] == int(changed.sum())
    assert stats["corrected_calls"] > 0 or not changed.any()  # a corrected call may have an empty span
    for key in ("failing_traj_correctable_frac", "failing_calls_correctable_frac"):
        assert 0.0 <= stats[key] <= 1.0
    assert stats["failing_calls_corrected_frac"] <= stats["failing_calls_correctable_frac"]
    assert stats["failing_traj_corrected_frac"] <= stats["failing_traj_correctable_frac"]


@SETTINGS
@given(batches(), configs, st.randoms(use_true_random=False))
def test_permuting_trajectories_permutes_the_output(batch, config, rnd):
    advantages, mask, groups, success, calls = batch
    perm = list(range(len(success)))
    rnd.shuffle(perm)  # new row r holds old row perm[r]
    where = {old: new for new, old in enumerate(perm)}
    shuffled_calls = [dataclasses.replace(c, traj=where[c.traj]) for c in calls]
    rnd.shuffle(shuffled_calls)
    out, stats = tapo_correct(advantages, mask, groups, success, calls, config)
    out_p, stats_p = tapo_correct(
        advantages[perm], mask[perm], [groups[i] for i in perm], [success[i] for i in perm], shuffled_calls, config
    )
    assert torch.equal(out_p, out[perm])
    assert stats.keys() == stats_p.keys()
    assert all(math.isclose(stats[k], stats_p[k], rel_tol=1e-9, abs_tol=1e-9) for k in stats)


@SETTINGS
@given(batches(), configs)
def test_identity_cases(batch, config):
    advantages, mask, groups, success, calls = batch
    for identity in (
        dataclasses.replace(config, beta=0.0),
        dataclasses.replace(config, theta=1.0 + 1e-9),
    ):
        assert torch.equal(tapo_correct(advantages, mask, groups, success, calls, identity)[0], advantages)
    assert torch.equal(tapo_correct(advantages, mask, groups, success, [], config)[0], advantages)


@SETTINGS
@given(batches(), configs, st.sampled_from([0.0, 0.1, 0.5, 0.8]), st.sampled_from([0.0, 0.2, 1.0, 3.0]))
def test_larger_beta_never_moves_a_value_further_from_zero(batch, config, beta, extra):
    advantages, mask, groups, success, calls = batch
    low, _ = tapo_correct(advantages, mask, groups, success, calls, dataclasses.replace(config, beta=beta))
    high, _ = tapo_correct(advantages, mask, groups, success, calls, dataclasses.replace(config, beta=beta + extra))
    assert torch.all(high.abs() <= low.abs())


@SETTINGS
@given(batches(), configs, st.data())
def test_all_fail_and_all_success_groups_are_no_ops(batch, config, data):
    advantages, mask, groups, success, calls = batch
    config = dataclasses.replace(config, scope="group")
    # Force every group to be uniform: all succeed or all fail.
    outcome = {g: data.draw(st.booleans()) for g in set(groups)}
    success = [outcome[g] for g in groups]
    out, stats = tapo_correct(advantages, mask, groups, success, calls, config)
    assert torch.equal(out, advantages)
    assert stats["failing_calls_correctable_frac"] == 0.0 and stats["ref_groups"] == 0
