"""The TAPO stage on REAL OpenRLHF experiences: hand-checked corrected advantages, info, refusals.

Batch (rollout order; n_samples_per_prompt = 4; micro-batches of 3, so groups straddle micro-batches):

    group 0, rewards [1, 1, 0, 0]          group 1, rewards [0, 1, 0, 0]
    t0 ok   : search(eiffel) -> answer     t4 fail: search(eiffel) -> answer
    t1 ok   : answer                       t5 ok  : zoom(box) -> answer
    t2 fail : search(eiffel) -> answer     t6 fail: zoom(box) -> answer
    t3 fail : search(paris) -> answer      t7 fail: invalid call -> answer

group_norm: A = (r - mean) / std (unbiased): group 0 -> ±sqrt(3)/2, group 1 -> [-0.5, 1.5, -0.5, -0.5].
Defaults beta 0.8, theta 0.8, alpha_min 0.25, scope group, span turn:
- t2's search turn: witness t0, support 1/2 (t0 of the 2 successes), ref advantage sqrt(3)/2:
  min(0, -sqrt(3)/2 + 0.8 * 1 * 1/2 * sqrt(3)/2) = -0.6 * sqrt(3)/2.
- t6's zoom turn: witness t5, support 1/1, ref 1.5: min(0, -0.5 + 0.8 * 1.5) = 0.
- t4's search has no witness in its own group; t3's query matches nothing; nothing else changes.
"""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from _tapo_rollouts import call, decode_columns, experiences, response, rows, tokenizer

from openrlhf_tapo.adapter.stage.credit_args import TAPOConfigError, check_tapo_compatible, estimator_namespace
from openrlhf_tapo.adapter.stage.experience_stage import TAPOExperienceMaker
from openrlhf_tapo.adapter.stage.openrlhf_args import parse_openrlhf_args
from openrlhf_tapo.adapter.stage.trajectory import turn_spans
from openrlhf_tapo.agent.config import load_agent_config
from openrlhf_tapo.algorithms.tapo import TAPOConfig
from openrlhf_tapo.tools.base import error_text

N = 4
EIFFEL = call("text_search", '{"query": "eiffel tower height"}')
PARIS = call("text_search", '{"query": "paris weather today"}')
ZOOM = call("zoom", '{"image": "img_0", "bbox": [100, 100, 500, 600]}')
INVALID = call("text_search", "{}")
SEARCH_TURN = "I will search. " + EIFFEL
FAILING_SEARCH_TURN = "Je cherche 北京 café. " + EIFFEL  # same canonical query, non-ASCII reasoning before it
H = math.sqrt(3) / 2

BASE_ARGV = [
    "--actor.model_name_or_path", "dummy",
    "--rollout.n_samples_per_prompt", str(N),
    "--rollout.batch_size", "2",
    "--rollout.micro_batch_size", "3",
    "--algo.kl.use_loss",
    "--algo.kl.estimator", "k3",
    "--actor.num_gpus_per_node", "1",
    "--train.agent_func_path", "openrlhf_tapo/agent/executor.py",
]  # fmt: skip


def _responses():
    def traj(first_turn, observation, reward, answer="<answer>330 m</answer>"):
        turns = [] if first_turn is None else [(first_turn, observation)]
        return response([*turns, (answer, None)], reward)

    return [
        traj(SEARCH_TURN, "The Eiffel Tower is 330 m tall.", 1.0),
        traj(None, None, 1.0),
        traj(FAILING_SEARCH_TURN, "The Eiffel Tower is 330 m tall.", 0.0, "<answer>100 m</answer>"),
        traj(PARIS, "Sunny.", 0.0, "<answer>no idea</answer>"),
        traj(EIFFEL, "The Eiffel Tower is 330 m tall.", 0.0, "<answer>3 m</answer>"),
        traj(ZOOM, "[img_1] zoomed", 1.0),
        traj(ZOOM, "[img_1] zoomed", 0.0, "<answer>1 m</answer>"),
        traj(INVALID, "Error (bad_arguments): query is required", 0.0, "<answer>2 m</answer>"),
    ]


@pytest.fixture(scope="module")
def openrlhf_args():
    return {
        est: parse_openrlhf_args([*BASE_ARGV, "--algo.advantage.estimator", est])
        for est in ("group_norm", "dr_grpo", "rloo")
    }


def _maker(args, agent_config=None, **tapo):
    args = copy.deepcopy(args)
    args.agent = SimpleNamespace(config=agent_config)
    args.tapo = estimator_namespace(enable=tapo.pop("enable", True), config=TAPOConfig(**tapo))
    return TAPOExperienceMaker(
        None, None, None, None, SimpleNamespace(value=0.0), SimpleNamespace(args=args), tokenizer()
    )


def _run(args, **tapo):
    """(OpenRLHF's own advantages, TAPO's) on the same batch, as lists of (experience, row)."""
    maker = _maker(args, **tapo)
    batches = experiences(maker, _responses())
    base = super(TAPOExperienceMaker, maker).compute_advantages_and_returns(copy.deepcopy(batches))
    return rows(base), rows(maker.compute_advantages_and_returns(batches))


def _first_turn(exp, row):
    return turn_spans(exp.action_mask[row])[0]


def _expect_unchanged_except(base, out, changed: dict[int, tuple[tuple[int, int], float]]):
    """Every trajectory equals OpenRLHF's advantages, except columns [s, e) of trajectory i set to `value`."""
    for i, ((bexp, brow), (exp, row)) in enumerate(zip(base, out, strict=True)):
        expected = bexp.advantages[brow].clone()
        if i in changed:
            (s, e), value = changed[i]
            assert torch.all(exp.action_mask[row, s:e])
            expected[s:e] = value
        assert torch.allclose(exp.advantages[row], expected, atol=1e-6), f"trajectory {i}"


def test_group_norm_turn_span_hand_values(openrlhf_args):
    base, out = _run(openrlhf_args["group_norm"])
    # OpenRLHF's own group advantages, as the docstring computes them.
    assert [b.advantages[r][b.action_mask[r].bool()].mean().item() for b, r in base] == pytest.approx(
        [H, H, -H, -H, -0.5, 1.5, -0.5, -0.5], abs=1e-5
    )
    t2_turn = _first_turn(*out[2])
    assert decode_columns(*out[2], *t2_turn) == FAILING_SEARCH_TURN
    _expect_unchanged_except(base, out, {2: (t2_turn, -0.6 * H), 6: (_first_turn(*out[6]), 0.0)})


@pytest.mark.parametrize(
    "estimator, t2",
    [
        # dr_grpo: A = r - mean. Group 0 -> ±0.5: t2 = -0.5 + 0.8 * 1/2 * 0.5. Group 1: t6 = min(0, -0.25 + 0.6).
        ("dr_grpo", -0.5 + 0.8 * 0.5 * 0.5),
        # rloo: A = r - mean of the others. Group 0 -> ±2/3: t2 = -2/3 + 0.8 * 1/2 * 2/3. t6 = min(0, -1/3 + 0.8).
        ("rloo", -2 / 3 + 0.8 * 0.5 * 2 / 3),
    ],
)
def test_other_group_estimators_hand_values(openrlhf_args, estimator, t2):
    base, out = _run(openrlhf_args[estimator])
    _expect_unchanged_except(base, out, {2: (_first_turn(*out[2]), t2), 6: (_first_turn(*out[6]), 0.0)})


def test_call_span_corrects_only_the_call_tokens(openrlhf_args):
    base, out = _run(openrlhf_args["group_norm"], span="call")
    exp, row = out[2]
    s, e = _first_turn(exp, row)
    columns = [j for j in range(s, e) if not math.isclose(exp.advantages[row, j].item(), -H, abs_tol=1e-6)]
    assert decode_columns(exp, row, columns[0], columns[-1] + 1) == EIFFEL
    assert columns == list(range(columns[0], columns[-1] + 1))
    _expect_unchanged_except(base, out, {2: ((columns[0], columns[-1] + 1), -0.6 * H), 6: (_first_turn(*out[6]), 0.0)})


def test_batch_scope_hand_values(openrlhf_args):
    # 3 successful trajectories in the batch: support 1/3 for each single-witness text group (confidence 1/3 >= 0.25).
    # Image tools keep witnesses of the same prompt even in batch scope (img_0 is each prompt's own picture), so the
    # zoom of trajectory 6 has support 1/1 in its group: min(0, -0.5 + 0.8 * 1.5) = 0.
    base, out = _run(openrlhf_args["group_norm"], scope="batch")
    credit_search = 0.8 * H / 3
    changed = {
        2: (_first_turn(*out[2]), -H + credit_search),
        4: (_first_turn(*out[4]), -0.5 + credit_search),
        6: (_first_turn(*out[6]), 0.0),
    }
    _expect_unchanged_except(base, out, changed)


def test_info_holds_per_sample_diagnostics(openrlhf_args):
    _, out = _run(openrlhf_args["group_norm"])
    batches = list(dict.fromkeys(id(exp) for exp, _ in out))
    exps = {id(exp): exp for exp, _ in out}
    assert [exps[b].sequences.shape[0] for b in batches] == [3, 3, 2]
    per_sample = {
        "tapo/tool_calls": [1, 0, 1, 1, 1, 1, 1, 0],
        "tapo/invalid_tool_calls": [0, 0, 0, 0, 0, 0, 0, 1],
        "tapo/turns": [2, 1, 2, 2, 2, 2, 2, 2],
        "tapo/success": [1, 1, 0, 0, 0, 1, 0, 0],
    }
    for key, expected in per_sample.items():
        got = torch.cat([exps[b].info[key] for b in batches]).tolist()
        assert got == expected, key
    for b in batches:
        info = exps[b].info
        size = exps[b].sequences.shape[0]
        tapo_keys = [k for k in info if k.startswith("tapo/")]
        assert all(info[k].shape == (size,) and info[k].dtype == torch.float32 for k in tapo_keys)
        # Failing: t2, t3, t4, t6, t7; correctable and corrected: t2 and t6.
        assert info["tapo/failing_traj_correctable_frac"].tolist() == pytest.approx([0.4] * size)
        assert info["tapo/corrected_calls"].tolist() == [2.0] * size
        assert info["group_reward_std"].shape == (size,)  # OpenRLHF's own info is still there
    delta = torch.cat([exps[b].info["tapo/advantage_delta"] for b in batches])
    assert delta[[0, 1, 3, 4, 5, 7]].tolist() == [0.0] * 6
    assert delta[2] > 0 and delta[6] > 0


def test_calls_are_read_with_the_runs_agent_config_and_failed_calls_get_no_credit(openrlhf_args, tmp_path):
    # The run's YAML enables a custom tool and raises the query limit; the stage must read calls as the rollout ran
    # them. Group 0: t0's lookup witnesses t2's (exact_json, support 1/2, Ā = H). Group 1: t5 witnesses t6's long
    # search (support 1, Ā = 1.5: corrected to 0); t4 made the same search but it failed, t5's zoom failed so it
    # is no witness for t7's.
    config = tmp_path / "agent.yaml"
    config.write_text(
        "tools:\n  enabled: [text_search, zoom, '_agent_helpers:LookupTool']\n  text_search: {max_query_chars: 2000}\n"
    )
    lookup = call("lookup", '{"key": "Paris"}')
    long_search = call("text_search", json.dumps({"query": "eiffel tower height " * 40}))
    failed = error_text("text_search took longer than 60 s; try again")
    answer = ("<answer>330 m</answer>", None)
    responses = [
        response([(lookup, "paris = 42"), answer], 1.0),
        response([answer], 1.0),
        response([(call("lookup", '{"key": " paris"}'), "paris = 42"), answer], 0.0),
        response([answer], 0.0),
        response([(long_search, failed), answer], 0.0),
        response([(long_search, "1. Eiffel Tower"), (ZOOM, error_text("zoom failed")), answer], 1.0),
        response([(long_search, "1. Eiffel Tower"), answer], 0.0),
        response([(ZOOM, "[img_1] zoomed"), answer], 0.0),
    ]
    maker = _maker(openrlhf_args["group_norm"], agent_config=str(config))
    batches = experiences(maker, responses)
    base = rows(super(TAPOExperienceMaker, maker).compute_advantages_and_returns(copy.deepcopy(batches)))
    out = rows(maker.compute_advantages_and_returns(batches))
    changed = {2: (_first_turn(*out[2]), -H + 0.8 * 0.5 * H), 6: (_first_turn(*out[6]), 0.0)}
    _expect_unchanged_except(base, out, changed)
    exp, _ = out[0]
    assert exp.info["tapo/failed_calls"][0] == 2 and exp.info["tapo/calls_lookup"][0] == 2
    assert torch.cat([e.info["tapo/tool_calls"][[r]] for e, r in out]).tolist() == [1, 0, 1, 0, 1, 2, 1, 1]

    # The in-process driver hands its AgentConfig over directly: same reading.
    args = copy.deepcopy(maker.args)
    args.agent.config = None
    direct = TAPOExperienceMaker(
        None, None, None, None, SimpleNamespace(value=0.0), SimpleNamespace(args=args), tokenizer(),
        agent_config=load_agent_config(config),
    )  # fmt: skip
    _expect_unchanged_except(
        base, rows(direct.compute_advantages_and_returns(experiences(direct, responses))), changed
    )

    # With the tools' defaults the lookups and the long searches are invalid: nothing is corrected.
    default_maker = _maker(openrlhf_args["group_norm"])
    out = rows(default_maker.compute_advantages_and_returns(experiences(default_maker, responses)))
    _expect_unchanged_except(base, out, {})


def test_tapo_off_is_openrlhf(openrlhf_args):
    base, out = _run(openrlhf_args["group_norm"], enable=False)
    _expect_unchanged_except(base, out, {})
    assert not any(k.startswith("tapo/") for exp, _ in out for k in exp.info)


def test_success_comes_from_scores_not_rewards(openrlhf_args):
    # A formatting bonus makes t3's reward 1.0 but its score 0: it is not a witness, and its advantage is positive.
    maker = _maker(openrlhf_args["group_norm"])
    resp = _responses()
    resp[3]["reward"], resp[3]["scores"] = 1.0, 0.0
    out = rows(maker.compute_advantages_and_returns(experiences(maker, resp)))
    assert torch.cat([exp.info["tapo/success"][[row]] for exp, row in out]).tolist() == [1, 1, 0, 0, 0, 1, 0, 0]


def _refusal(openrlhf_args, **changes):
    args = copy.deepcopy(openrlhf_args["group_norm"])
    args.tapo = estimator_namespace(True, TAPOConfig())
    for path, value in changes.items():
        node = args
        *parents, leaf = path.split("__")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    with pytest.raises(TAPOConfigError) as err:
        check_tapo_compatible(args)
    with pytest.raises(TAPOConfigError):
        TAPOExperienceMaker(None, None, None, None, SimpleNamespace(value=0.0), SimpleNamespace(args=args), None)
    return str(err.value)


@pytest.mark.parametrize("estimator", ["gae", "reinforce", "reinforce_baseline", "flash_reinforce"])
def test_refuses_estimators_without_group_advantages(openrlhf_args, estimator):
    message = _refusal(openrlhf_args, algo__advantage__estimator=estimator)
    assert f"--algo.advantage.estimator {estimator}" in message and "group_norm" in message


def test_refuses_single_sample_kl_reward_and_no_agent(openrlhf_args):
    assert "--rollout.n_samples_per_prompt" in _refusal(openrlhf_args, rollout__n_samples_per_prompt=1)
    message = _refusal(openrlhf_args, algo__kl__use_loss=False, algo__kl__init_coef=0.01)
    assert "--algo.kl.use_loss" in message and "--algo.kl.init_coef 0" in message
    assert "--agent.config" in _refusal(openrlhf_args, train__agent_func_path=None)


def test_corrections_and_info_survive_the_actor_replay_buffer(openrlhf_args, monkeypatch):
    """The actor stores experiences in OpenRLHF's replay buffer (split per sample, padding removed) and trains on
    re-batched samples; corrected advantages and the per-sample diagnostics must come through intact."""
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer

    _, out = _run(openrlhf_args["group_norm"])
    expected = [
        (exp.advantages[row][exp.action_mask[row].bool()], exp.info["tapo/tool_calls"][row]) for exp, row in out
    ]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # the buffer names a CUDA target it never uses here
    buffer = NaiveReplayBuffer(sample_batch_size=len(out), cpu_offload=False)
    for exp in {id(exp): exp for exp, _ in out}.values():
        buffer.append(exp)
    batch = buffer.collate_fn([buffer[i] for i in range(len(buffer))])
    for i, (advantages, calls) in enumerate(expected):
        assert torch.equal(batch.advantages[i][batch.action_mask[i].bool()], advantages)
        assert batch.info["tapo/tool_calls"][i] == calls
    # What ActorPPOTrainer.training_step logs for a list-valued info key: the mean over samples.
    logged = torch.tensor(batch.info["tapo/failing_traj_correctable_frac"], dtype=torch.float).mean().item()
    assert logged == pytest.approx(0.4)


def _step_maker(args, **sections):
    """A maker with TAPO off and the given estimators on (`gigpo=GiGPOConfig(...)`, `turn_reward=...`)."""
    args = copy.deepcopy(args)
    args.agent = SimpleNamespace(config=None)
    args.tapo = estimator_namespace(False, TAPOConfig())
    for name, config in sections.items():
        setattr(args, name, estimator_namespace(True, config))
    return TAPOExperienceMaker(
        None, None, None, None, SimpleNamespace(value=0.0), SimpleNamespace(args=args), tokenizer()
    )


def _expect_turn_values(base, out, expected):
    """Trajectory i's k-th turn holds OpenRLHF's advantage + expected[i][k] on every token; the rest is OpenRLHF's."""
    for i, ((bexp, brow), (exp, row)) in enumerate(zip(base, out, strict=True)):
        want = bexp.advantages[brow].clone()
        spans = turn_spans(exp.action_mask[row])
        assert len(spans) == len(expected[i]), f"trajectory {i}"
        for (s, e), add in zip(spans, expected[i], strict=True):
            want[s:e] += add
        assert torch.allclose(exp.advantages[row], want, atol=1e-6), f"trajectory {i}"


def test_gigpo_stage_hand_values(openrlhf_args):
    """gamma 0.5, mean_norm, omega 1, states = calls that returned so far:
    group 0, state (): returns t0 0.5, t1 1, t2 0, t3 0 (mean 0.375); after the eiffel search: t0 1, t2 0 (same query,
    same observation); t3's paris state is a singleton.
    group 1, state (): t4 0, t5 0.5, t6 0, t7 0 and t7's second turn (its invalid call returned nothing, so it still
    acts from the empty state), return 0: mean 0.1. After the zoom: t5 1, t6 0; t4's eiffel state is a singleton."""
    from openrlhf_tapo.algorithms.gigpo import GiGPOConfig

    maker = _step_maker(openrlhf_args["group_norm"], gigpo=GiGPOConfig(gamma=0.5, omega=1.0))
    batches = experiences(maker, _responses())
    base = rows(super(TAPOExperienceMaker, maker).compute_advantages_and_returns(copy.deepcopy(batches)))
    out = rows(maker.compute_advantages_and_returns(batches))
    expected = [
        [0.125, 0.5], [0.625], [-0.375, -0.5], [-0.375, 0.0],
        [-0.1, 0.0], [0.4, 0.5], [-0.1, -0.5], [-0.1, -0.1],
    ]  # fmt: skip
    _expect_turn_values(base, out, expected)
    info = out[0][0].info
    assert info["gigpo/singleton_share"][0].item() == pytest.approx(2 / 15)
    assert info["gigpo/step_groups"][0].item() == 6
    assert not any(k.startswith("tapo/corrected") for k in info)  # TAPO is off


def test_gigpo_omega_zero_is_openrlhf_bit_for_bit(openrlhf_args):
    from openrlhf_tapo.algorithms.gigpo import GiGPOConfig

    maker = _step_maker(openrlhf_args["group_norm"], gigpo=GiGPOConfig(omega=0.0))
    batches = experiences(maker, _responses())
    base = rows(super(TAPOExperienceMaker, maker).compute_advantages_and_returns(copy.deepcopy(batches)))
    out = rows(maker.compute_advantages_and_returns(batches))
    for (bexp, brow), (exp, row) in zip(base, out, strict=True):
        assert torch.equal(exp.advantages[row], bexp.advantages[brow])


def test_turn_reward_stage_hand_values(openrlhf_args):
    """Label "330 m": the eiffel observation holds it, so t0, t2 and t4 hit on turn 0. lam 0.5, mean_std_norm:
    group 0 h = [1, 0, 1, 0] -> +-0.5 / (sqrt(1/3) + eps); group 1 h = [1, 0, 0, 0] -> 0.75 / 0.5, -0.25 / 0.5.
    A hit credits the turns up to the hit; no hit, every turn."""
    from openrlhf_tapo.algorithms.turn_reward import TurnRewardConfig

    maker = _step_maker(openrlhf_args["group_norm"], turn_reward=TurnRewardConfig(lam=0.5))
    responses = _responses()
    for r in responses:
        r["label"] = json.dumps({"ground_truth": "330 m"})
    batches = experiences(maker, responses)
    base = rows(super(TAPOExperienceMaker, maker).compute_advantages_and_returns(copy.deepcopy(batches)))
    out = rows(maker.compute_advantages_and_returns(batches))
    g0 = 0.5 * 0.5 / (math.sqrt(1 / 3) + 1e-6)
    g1_hit, g1_miss = 0.5 * 0.75 / (0.5 + 1e-6), 0.5 * -0.25 / (0.5 + 1e-6)
    expected = [
        [g0, 0.0], [-g0], [g0, 0.0], [-g0, -g0],
        [g1_hit, 0.0], [g1_miss, g1_miss], [g1_miss, g1_miss], [g1_miss, g1_miss],
    ]  # fmt: skip
    _expect_turn_values(base, out, expected)
    assert out[0][0].info["turn_reward/hit_rate"][0].item() == pytest.approx(3 / 8)


def test_step_estimators_are_refused_where_they_cannot_work(openrlhf_args):
    from openrlhf_tapo.algorithms.gigpo import GiGPOConfig

    args = copy.deepcopy(openrlhf_args["group_norm"])
    args.tapo = estimator_namespace(False, TAPOConfig())
    args.gigpo = estimator_namespace(True, GiGPOConfig())
    args.rollout.n_samples_per_prompt = 1
    with pytest.raises(TAPOConfigError, match="--gigpo.enable needs several rollouts per prompt"):
        check_tapo_compatible(args)
    args.rollout.n_samples_per_prompt = 4
    args.algo.advantage.estimator = "gae"
    with pytest.raises(TAPOConfigError, match="--gigpo.enable does not work with --algo.advantage.estimator gae"):
        check_tapo_compatible(args)
