"""TAPO credit transfer on small hand-computed batches: one test per option, gate, statistic and input check."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from openrlhf_tapo.algorithms.tapo import (
    MAX_BLOCK_GROUPS,
    TAPOConfig,
    ToolCall,
    correctable_rate,
    tapo_correct,
    trajectory_advantages,
)

WIDTH = 8


def _call(traj, tool, params, turn=0, call=None, turn_span=None, observation=""):
    # Turn k spans columns [4k, 4k + 4); its call is the last two tokens.
    turn_span = turn_span or (4 * turn, 4 * turn + 4)
    call = call or (turn_span[1] - 2, turn_span[1])
    return ToolCall(traj, tool, params, call, turn_span, turn, observation)


def _rows(*values, width=WIDTH):
    return torch.tensor([[v] * width for v in values], dtype=torch.float32)


def _mask(batch, width=WIDTH):
    return torch.ones(batch, width, dtype=torch.bool)


EIFFEL = {"query": "Eiffel tower height"}
ZOOM = {"image": "img_0", "bbox": [0, 0, 500, 500]}


@pytest.fixture
def batch():
    """One group: rows 0, 1 succeed (A = 1.0, 0.5); rows 2, 3 fail (A = -1.0, -2.0)."""
    advantages = _rows(1.0, 0.5, -1.0, -2.0)
    calls = [
        _call(0, "text_search", EIFFEL),
        _call(1, "text_search", {"query": "eiffel tower, height"}),
        _call(1, "zoom", ZOOM, turn=1),
        _call(2, "text_search", {"query": "The Eiffel Tower height!"}),  # exact: m = 1, c = 2/2, Ā = 0.75
        _call(3, "text_search", {"query": "eiffel tower"}),  # Jaccard 2/3 < theta: not correctable
        _call(3, "zoom", {"image": "img_0", "bbox": [0, 0, 500, 400]}, turn=1),  # IoU 0.8, c = 1/2, Ā = 0.5
    ]
    return SimpleNamespace(
        advantages=advantages, mask=_mask(4), groups=[7, 7, 7, 7], success=[1, 1, 0, 0], calls=calls
    )


def _run(b, **options):
    return tapo_correct(b.advantages, b.mask, b.groups, b.success, b.calls, TAPOConfig(theta=0.75, **options))


def test_turn_span_correction_and_statistics(batch):
    before = batch.advantages.clone()
    out, stats = _run(batch)
    assert torch.equal(batch.advantages, before) and out is not batch.advantages
    expected = before.clone()
    expected[2, 0:4] = -1.0 + 0.8 * 1.0 * 1.0 * 0.75  # -0.4
    expected[3, 4:8] = -2.0 + 0.8 * 0.8 * 0.5 * 0.5  # -1.84
    assert torch.allclose(out, expected)
    assert stats["failing_trajectories"] == 2 and stats["successful_trajectories"] == 2
    assert stats["failing_calls"] == 3
    assert stats["failing_calls_correctable_frac"] == pytest.approx(2 / 3)
    assert stats["failing_calls_corrected_frac"] == pytest.approx(2 / 3)
    assert stats["failing_traj_correctable_frac"] == 1.0 and stats["failing_traj_corrected_frac"] == 1.0
    assert stats["corrected_calls"] == 2 and stats["corrected_tokens"] == 8
    assert stats["mean_transferred_credit"] == pytest.approx((0.6 + 0.16) / 2)
    assert stats["mean_advantage_change"] == pytest.approx((4 * 0.6 + 4 * 0.16) / 8)
    assert stats["mean_match_similarity"] == pytest.approx((1.0 + 0.8) / 2)
    assert stats["ref_groups"] == 2 and stats["ref_group_size_mean"] == 1.5 and stats["ref_group_size_max"] == 2
    assert stats["ref_group_support_mean"] == pytest.approx(0.75)
    assert stats["num_calls"] == 6 and stats["calls_text_search"] == 4 and stats["calls_zoom"] == 2
    assert stats["unkeyable_calls"] == 0
    assert all(isinstance(v, float) for v in stats.values())


def test_call_span_corrects_the_call_tokens_only(batch):
    out, _ = _run(batch, span="call")
    expected = batch.advantages.clone()
    expected[2, 2:4] = -0.4
    expected[3, 6:8] = -1.84
    assert torch.allclose(out, expected)


def test_confidence_gate_blocks_low_support(batch):
    # The zoom match has confidence m * c = 0.8 * 0.5 = 0.4: correctable, but not corrected under alpha_min 0.5.
    out, stats = _run(batch, alpha_min=0.5)
    assert torch.equal(out[3], batch.advantages[3])
    assert torch.allclose(out[2, :4], torch.full((4,), -0.4))
    assert stats["failing_calls_correctable_frac"] == pytest.approx(2 / 3)
    assert stats["failing_calls_corrected_frac"] == pytest.approx(1 / 3)
    assert stats["failing_traj_corrected_frac"] == 0.5


def test_theta_gate_and_fuzzy_threshold(batch):
    # At theta 0.6 the query "eiffel tower" (Jaccard 2/3, c = 1, Ā = 0.75) is also corrected on row 3's turn 0.
    out, stats = tapo_correct(
        batch.advantages, batch.mask, batch.groups, batch.success, batch.calls, TAPOConfig(theta=0.6)
    )
    assert torch.allclose(out[3, :4], torch.full((4,), -2.0 + 0.8 * (2 / 3) * 1.0 * 0.75))
    assert stats["failing_calls_corrected_frac"] == 1.0
    # At theta 0.9 only the exact text match is left.
    out, stats = tapo_correct(
        batch.advantages, batch.mask, batch.groups, batch.success, batch.calls, TAPOConfig(theta=0.9)
    )
    assert torch.equal(out[3], batch.advantages[3])
    assert stats["failing_calls_correctable_frac"] == pytest.approx(1 / 3)


def test_without_support_factor(batch):
    out, _ = _run(batch, use_support=False)
    assert torch.allclose(out[3, 4:8], torch.full((4,), -2.0 + 0.8 * 0.8 * 0.5))  # c_g dropped: -1.68
    assert torch.allclose(out[2, 0:4], torch.full((4,), -0.4))  # c_g = 1 there


def test_clip_at_zero_and_its_ablation(batch):
    # beta 2: credit on row 2 is 2 * 0.75 = 1.5 > |-1.0|.
    clipped, _ = _run(batch, beta=2.0)
    assert torch.equal(clipped[2, :4], torch.zeros(4))
    unclipped, _ = _run(batch, beta=2.0, clip_at_zero=False)
    assert torch.allclose(unclipped[2, :4], torch.full((4,), 0.5))


def test_masked_and_non_negative_tokens_are_not_touched(batch):
    batch.mask[2, 1] = False
    batch.advantages[2, 3] = 0.25  # a non-negative token inside a failing turn
    out, stats = _run(batch)
    assert out[2, 1] == batch.advantages[2, 1] and out[2, 3] == 0.25
    assert torch.allclose(out[2, [0, 2]], torch.full((2,), -0.4))
    assert stats["corrected_tokens"] == 6


def test_trajectory_advantage_is_the_masked_mean():
    adv = torch.tensor([[-1.0, -1.0, 5.0], [0.0, 0.0, 0.0], [2.0, -4.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 0]])
    assert trajectory_advantages(adv, mask).tolist() == [-1.0, 0.0, -1.0]


def test_failing_requires_negative_advantage():
    # Row 1 is unsuccessful but its advantage is 0 (e.g. an all-wrong group under GRPO): not failing.
    adv = _rows(1.0, 0.0, -1.0)
    calls = [_call(i, "text_search", EIFFEL) for i in range(3)]
    out, stats = tapo_correct(adv, _mask(3), [0, 0, 0], [True, False, False], calls, TAPOConfig())
    assert stats["failing_trajectories"] == 1 and stats["failing_calls"] == 1
    assert torch.equal(out[1], adv[1]) and torch.allclose(out[2, :4], torch.full((4,), -0.2))


def test_group_scope_versus_batch_scope():
    # Group 0: row 0 succeeds with the call; group 1 has no success but row 2 makes the same call.
    adv = _rows(1.0, -1.0, -1.0, -0.5)
    calls = [_call(0, "text_search", EIFFEL), _call(2, "text_search", EIFFEL)]
    args = (adv, _mask(4), [0, 0, 1, 1], [True, False, False, False], calls)
    out, stats = tapo_correct(*args, TAPOConfig())
    assert torch.equal(out, adv) and stats["failing_calls_correctable_frac"] == 0.0
    out, stats = tapo_correct(*args, TAPOConfig(scope="batch"))
    # One successful trajectory in the batch, and it made the call: c = 1, Ā = 1.0.
    assert torch.allclose(out[2, :4], torch.full((4,), -0.2)) and torch.equal(out[2, 4:], adv[2, 4:])
    assert stats["failing_calls_correctable_frac"] == 1.0
    # Both groups have a success; row 2's call is witnessed only in group 0: still nothing under scope "group".
    calls.append(_call(3, "text_search", {"query": "louvre"}))
    success = [True, False, False, True]
    out, stats = tapo_correct(adv, _mask(4), [0, 0, 1, 1], success, calls, TAPOConfig())
    assert torch.equal(out, adv) and stats["ref_groups"] == 2 and stats["failing_calls_correctable_frac"] == 0.0


def test_batch_scope_support_counts_every_success_of_the_batch():
    adv = _rows(2.0, 1.0, -1.0)
    calls = [_call(0, "text_search", EIFFEL), _call(2, "text_search", EIFFEL)]
    out, _ = tapo_correct(adv, _mask(3), [0, 1, 1], [True, True, False], calls, TAPOConfig(scope="batch"))
    # c = 1/2 (row 1 succeeded without the call), Ā = 2.0, m = 1: credit 0.8 * 0.5 * 2.0 = 0.8.
    assert torch.allclose(out[2, :4], torch.full((4,), -0.2))


def test_batch_scope_keeps_image_refs_within_their_prompt():
    # "img_0" is each prompt's own question image: a zoom on it in group 0 says nothing about group 1's img_0.
    adv = _rows(1.0, 1.0, -1.0)
    calls = [_call(0, "zoom", ZOOM), _call(0, "text_search", EIFFEL, turn=1)]
    calls += [_call(2, "zoom", ZOOM), _call(2, "text_search", EIFFEL, turn=1)]
    out, stats = tapo_correct(adv, _mask(3), [0, 1, 1], [True, True, False], calls, TAPOConfig(scope="batch"))
    # Text: batch support 1/2, Ā = 1.0, credit 0.4. Zoom: group 1's only success made no zoom -> no witness.
    assert torch.equal(out[2, :4], adv[2, :4]) and torch.allclose(out[2, 4:], torch.full((4,), -0.6))
    assert stats["failing_calls_correctable_frac"] == 0.5


def test_turn_window():
    # Witnesses: row 0 at turn 0 (A = 1.0), row 1 at turn 1 (A = 0.5). The failing call is at turn 1.
    adv = _rows(1.0, 0.5, -1.0)
    calls = [_call(0, "text_search", EIFFEL), _call(1, "text_search", EIFFEL, turn=1)]
    calls.append(_call(2, "text_search", EIFFEL, turn=1))
    args = (adv, _mask(3), [0, 0, 0], [True, True, False], calls)
    off, _ = tapo_correct(*args, TAPOConfig())
    assert torch.allclose(off[2, 4:], torch.full((4,), -1.0 + 0.8 * 1.0 * 0.75))
    near, _ = tapo_correct(*args, TAPOConfig(turn_window=0))
    # Only row 1 qualifies: c = 1/2, Ā = 0.5, confidence 0.5 >= 0.25.
    assert torch.allclose(near[2, 4:], torch.full((4,), -1.0 + 0.8 * 0.5 * 0.5))
    wide, _ = tapo_correct(*args, TAPOConfig(turn_window=1))
    assert torch.equal(wide, off)
    calls[1] = _call(1, "text_search", {"query": "other"}, turn=1)
    none_near, stats = tapo_correct(adv, _mask(3), [0, 0, 0], [True, True, False], calls, TAPOConfig(turn_window=0))
    assert torch.equal(none_near, adv) and stats["failing_calls_correctable_frac"] == 0.0


def test_observation_checks():
    adv = _rows(1.0, -1.0, -1.0)
    calls = [
        _call(0, "text_search", EIFFEL, observation="The tower is 330 metres tall."),
        _call(1, "text_search", EIFFEL, observation="the tower is 330 metres tall"),  # same after normalising
        _call(2, "text_search", EIFFEL, observation="tower 330 metres, built 1889"),  # Jaccard 3/7 with the witness
    ]
    args = (adv, _mask(3), [0, 0, 0], [True, False, False], calls)
    exact, stats = tapo_correct(*args, TAPOConfig(obs_check="exact"))
    assert torch.allclose(exact[1, :4], torch.full((4,), -0.2)) and torch.equal(exact[2], adv[2])
    assert stats["failing_calls_correctable_frac"] == 0.5
    loose, _ = tapo_correct(*args, TAPOConfig(obs_check="overlap", obs_min_overlap=0.4))
    assert torch.allclose(loose[2, :4], torch.full((4,), -0.2))
    strict, _ = tapo_correct(*args, TAPOConfig(obs_check="overlap", obs_min_overlap=0.5))
    assert torch.equal(strict[2], adv[2]) and torch.allclose(strict[1, :4], torch.full((4,), -0.2))


def test_best_match_prefers_similarity_then_support():
    # Failing query {p, q, r, s}. X = {p, q, r, s, t} (m 0.8, once, Ā 5.0), Z = {p, q, r, s, u} (m 0.8, twice,
    # Ā 3.0), Y = {p, q, r} (m 0.75, three times): Z wins, on similarity first and then on support.
    adv = _rows(5.0, 3.0, 3.0, -1.0)
    calls = [
        _call(0, "text_search", {"query": "p q r s t"}),
        _call(1, "text_search", {"query": "p q r s u"}),
        _call(2, "text_search", {"query": "p q r s u"}),
        *(_call(i, "text_search", {"query": "p q r"}, turn=1) for i in range(3)),
        _call(3, "text_search", {"query": "p q r s"}),
    ]
    out, stats = tapo_correct(
        adv, _mask(4), [0] * 4, [True, True, True, False], calls, TAPOConfig(beta=0.1, theta=0.7)
    )
    # Z: m = 0.8, c = 2/3, Ā = 3.0 -> credit 0.1 * 0.8 * 2/3 * 3 = 0.16.
    assert torch.allclose(out[3, :4], torch.full((4,), -1.0 + 0.16))
    assert stats["mean_match_similarity"] == pytest.approx(0.8)


def test_overlapping_spans_take_the_largest_credit():
    adv = _rows(1.0, -1.0, width=6)
    calls = [
        _call(0, "text_search", EIFFEL, turn_span=(0, 6)),
        _call(0, "zoom", ZOOM, turn=1, turn_span=(0, 6)),
        _call(1, "text_search", EIFFEL, turn_span=(0, 4)),  # credit 0.8
        _call(1, "zoom", {"image": "img_0", "bbox": [0, 0, 500, 450]}, turn=1, turn_span=(2, 6)),  # credit 0.72
    ]
    out, _ = tapo_correct(adv, _mask(2, 6), [0, 0], [True, False], calls, TAPOConfig())
    assert torch.allclose(out[1], torch.tensor([-0.2, -0.2, -0.2, -0.2, -0.28, -0.28]))


def test_unknown_tool_uses_canonical_json_and_unreadable_params_are_counted():
    adv = _rows(1.0, -1.0, -1.0)
    calls = [
        _call(0, "calculator", {"a": 1, "op": "+"}),
        _call(1, "calculator", {"op": "+", "a": 1}),
        _call(0, "text_search", {"q": "typo"}),
        _call(2, "text_search", {"q": "typo"}),
    ]
    out, stats = tapo_correct(adv, _mask(3), [0, 0, 0], [True, False, False], calls, TAPOConfig())
    assert torch.allclose(out[1, :4], torch.full((4,), -0.2)) and torch.equal(out[2], adv[2])
    assert stats["unkeyable_calls"] == 2 and stats["calls_calculator"] == 2


def test_failed_calls_are_never_witnesses_and_never_credited(batch):
    # Row 0's search failed (an error observation): the exact group keeps row 1 only, c = 1/2, Ā = 0.5, so row 2
    # gets 0.8 * 1 * 0.5 * 0.5 = 0.2. Row 3's zoom failed: it matches row 1's zoom but receives nothing.
    calls = list(batch.calls)
    calls[0] = dataclasses.replace(calls[0], succeeded=False)
    calls[5] = dataclasses.replace(calls[5], succeeded=False)
    batch.calls = calls
    out, stats = _run(batch)
    expected = batch.advantages.clone()
    expected[2, 0:4] = -1.0 + 0.8 * 1.0 * 0.5 * 0.5
    assert torch.allclose(out, expected)
    assert stats["failed_calls"] == 2 and stats["failing_calls"] == 3
    assert stats["failing_calls_correctable_frac"] == pytest.approx(1 / 3) and stats["corrected_calls"] == 1
    assert stats["ref_groups"] == 2 and stats["ref_group_size_max"] == 1 and stats["ref_group_support_mean"] == 0.5
    assert correctable_rate(batch.groups, batch.success, calls, TAPOConfig(theta=0.75))[
        "failing_calls_correctable_frac"
    ] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "witnesses, correctable, dropped", [(MAX_BLOCK_GROUPS, 1.0, 0), (MAX_BLOCK_GROUPS + 1, 0.5, 1)]
)
def test_a_block_shared_by_too_many_groups_is_dropped_like_a_stop_word(witnesses, correctable, dropped):
    # scope=batch, theta 0.3: "photographically y" matches every witness "photographically zK" at Jaccard 1/3
    # through their one shared block, the long word. Once more than MAX_BLOCK_GROUPS groups share it, that block is
    # dropped: the fuzzy match is lost, the exact duplicate of "photographically z0" is still found by its hash.
    queries = [f"photographically z{k}" for k in range(witnesses)] + ["photographically y", "photographically z0"]
    calls = [_call(i, "text_search", {"query": q}) for i, q in enumerate(queries)]
    adv = _rows(*([1.0] * witnesses + [-1.0, -1.0]))
    success = [True] * witnesses + [False, False]
    config = TAPOConfig(scope="batch", theta=0.3, alpha_min=0.0)
    out, stats = tapo_correct(adv, _mask(len(queries)), list(range(len(queries))), success, calls, config)
    assert stats["failing_calls_correctable_frac"] == correctable and stats["dropped_blocks"] == dropped
    assert torch.allclose(out[-1, :4], torch.full((4,), -1.0 + 0.8 / witnesses))
    fuzzy_credit = 0.8 * (1 / 3) * (1 / witnesses) if dropped == 0 else 0.0
    assert torch.allclose(out[-2, :4], torch.full((4,), -1.0 + fuzzy_credit))


def test_identity_cases(batch):
    for config in (TAPOConfig(beta=0.0), TAPOConfig(theta=1.01)):
        out, stats = tapo_correct(batch.advantages, batch.mask, batch.groups, batch.success, batch.calls, config)
        assert torch.equal(out, batch.advantages) and stats["corrected_calls"] == 0
    out, stats = tapo_correct(batch.advantages, batch.mask, batch.groups, batch.success, [], TAPOConfig())
    assert torch.equal(out, batch.advantages) and stats["num_calls"] == 0 and stats["failing_calls"] == 0


def test_tensor_inputs_and_low_precision(batch):
    out, _ = tapo_correct(
        batch.advantages.bfloat16(),
        batch.mask.long(),
        torch.tensor(batch.groups),
        torch.tensor(batch.success, dtype=torch.bool),
        batch.calls,
        TAPOConfig(theta=0.75),
    )
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out[2, :4].float(), torch.full((4,), -0.4), atol=1e-2)


def test_correctable_rate_uses_the_same_rule(batch):
    rate = correctable_rate(batch.groups, batch.success, batch.calls, TAPOConfig(theta=0.75))
    _, stats = _run(batch)
    for key in ("failing_trajectories", "failing_calls", "failing_traj_correctable_frac"):
        assert rate[key] == stats[key]
    assert rate["failing_calls_correctable_frac"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="success has 2 entries but the batch has 4 trajectories"):
        correctable_rate(batch.groups, [True, False], batch.calls)
    with pytest.raises(ValueError, match=r"calls\[0\].traj = 9 is outside the batch"):
        correctable_rate(batch.groups, batch.success, [_call(9, "zoom", ZOOM)])


def test_real_openrlhf_group_norm_advantages_then_tapo():
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    from openrlhf_tapo.adapter.stage.openrlhf_args import parse_openrlhf_args

    args = parse_openrlhf_args(
        [
            "--actor.model_name_or_path", "dummy",
            "--algo.advantage.estimator", "group_norm",
            "--rollout.n_samples_per_prompt", "4",
            "--rollout.batch_size", "1",
            "--rollout.micro_batch_size", "4",
            "--actor.num_gpus_per_node", "1",
        ]
    )  # fmt: skip
    maker = RemoteExperienceMaker(None, None, None, None, SimpleNamespace(value=0.0), SimpleNamespace(args=args), None)
    mask = _mask(4)
    exp = Experience(
        sequences=torch.ones(4, WIDTH + 2, dtype=torch.long),
        action_mask=mask,
        rewards=torch.tensor([1.0, 0.0, 0.0, 0.0]),
        kl=torch.zeros(4, WIDTH),
        index=[0, 1, 2, 3],
        info={},
    )
    advantages = maker.compute_advantages_and_returns([exp])[0].advantages  # 1.5, -0.5, -0.5, -0.5
    calls = [_call(0, "text_search", EIFFEL), _call(1, "text_search", EIFFEL, turn=1)]
    out, _ = tapo_correct(advantages, mask, [0] * 4, [True, False, False, False], calls, TAPOConfig(beta=0.2))
    # credit 0.2 * 1 * 1 * 1.5 = 0.3 on row 1's second turn.
    assert torch.allclose(out[1], torch.tensor([-0.5] * 4 + [-0.2] * 4), atol=1e-6)
    assert torch.equal(out[2:], advantages[2:]) and torch.equal(out[0], advantages[0])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("beta", -0.1, "tapo.beta must be >= 0"),
        ("beta", float("nan"), "tapo.beta must be a finite number"),
        ("theta", 0.0, "tapo.theta must be > 0"),
        ("alpha_min", -1, "tapo.alpha_min must be >= 0"),
        ("scope", "prompt", r"tapo.scope must be one of \('group', 'batch'\)"),
        ("span", "token", r"tapo.span must be one of \('turn', 'call'\)"),
        ("turn_window", -1, "tapo.turn_window must be None"),
        ("turn_window", 1.5, "tapo.turn_window must be None"),
        ("obs_check", "fuzzy", "tapo.obs_check must be one of"),
        ("obs_min_overlap", 1.5, r"tapo.obs_min_overlap must be in \[0, 1\]"),
        ("use_support", "yes", "tapo.use_support must be True or False"),
        ("clip_at_zero", 1, "tapo.clip_at_zero must be True or False"),
        ("success_threshold", "1", "tapo.success_threshold must be a finite number"),
        ("similarity", {"zoom": "iou"}, r"tapo.similarity\['zoom'\] = 'iou' is not a registered similarity"),
        ("similarity", {"zoom": None}, "tapo.similarity must map str -> str"),
        ("similarity", ["zoom"], "tapo.similarity must map tool name -> similarity name"),
    ],
)
def test_config_validation_names_the_field(field, value, message):
    config = TAPOConfig(**{field: value})
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_default_config_is_valid_and_documented_defaults():
    config = TAPOConfig()
    config.validate()
    assert (config.beta, config.theta, config.alpha_min, config.scope, config.span) == (
        0.8,
        0.8,
        0.25,
        "group",
        "turn",
    )
    assert config.similarity == {"text_search": "text_fuzzy", "image_search": "image", "zoom": "bbox_iou"}


def test_bad_inputs_are_rejected(batch):
    def run(**over):
        kw = dict(
            advantages=batch.advantages,
            action_mask=batch.mask,
            group_ids=batch.groups,
            success=batch.success,
            calls=batch.calls,
            config=TAPOConfig(),
        )
        kw.update(over)
        return tapo_correct(**kw)

    with pytest.raises(ValueError, match="must be \\[B, T\\] of one shape"):
        run(action_mask=batch.mask[:, :3])
    with pytest.raises(ValueError, match="success has 3 entries but the batch has 4 trajectories"):
        run(success=[1, 0, 0])
    with pytest.raises(ValueError, match="group_ids has 5 entries"):
        run(group_ids=[0] * 5)
    with pytest.raises(ValueError, match=r"calls\[0\].traj = 4 is outside the batch"):
        run(calls=[_call(4, "zoom", ZOOM)])
    with pytest.raises(ValueError, match=r"calls\[0\].turn_span = \(6, 10\) is not a half-open range"):
        run(calls=[_call(0, "zoom", ZOOM, call=(6, 8), turn_span=(6, 10))])
    with pytest.raises(ValueError, match="tapo.scope"):
        run(config=TAPOConfig(scope="nope"))


def test_trajectory_advantage_selects_instead_of_multiplying():
    # A non-finite value in a masked column must not reach A_i (NaN * 0 is NaN).
    adv = torch.tensor([[-1.0, -3.0, float("nan")], [2.0, float("inf"), float("-inf")]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert trajectory_advantages(adv, mask).tolist() == [-2.0, 2.0]
    assert trajectory_advantages(adv.half().float(), mask.bool()).tolist() == [-2.0, 2.0]


def test_nan_in_a_masked_column_keeps_the_correction():
    adv = _rows(1.0, -1.0)
    adv[1, 7] = float("nan")
    mask = _mask(2)
    mask[1, 7] = False
    calls = [_call(0, "text_search", EIFFEL), _call(1, "text_search", EIFFEL)]
    out, stats = tapo_correct(adv, mask, [0, 0], [True, False], calls, TAPOConfig())
    assert stats["corrected_calls"] == 1
    assert torch.allclose(out[1, :4], torch.full((4,), -1.0 + 0.8 * 1.0 * 1.0 * 1.0))


@pytest.mark.parametrize("params", [None, "Eiffel tower height", 42, ["query"]])
def test_params_that_are_not_a_dict_are_unkeyable(params):
    adv = _rows(1.0, -1.0)
    calls = [_call(0, "text_search", EIFFEL), _call(1, "text_search", params)]
    out, stats = tapo_correct(adv, _mask(2), [0, 0], [True, False], calls, TAPOConfig())
    assert stats["unkeyable_calls"] == 1 and torch.equal(out, adv)
