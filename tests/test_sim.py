"""The mechanism study's environment, its wiring to OpenRLHF's advantages and TAPO, determinism, and the direction
of TAPO's effect in each regime (the full study: docs/results.md §1)."""

import json
import math

import pytest
import torch

from openrlhf_tapo.adapter.stage.advantages import openrlhf_group_advantages
from openrlhf_tapo.algorithms.tapo import TAPOConfig, tapo_correct
from openrlhf_tapo.sim import env
from openrlhf_tapo.sim.env import REGIMES, Batch, Policy, Regime, expected_accuracy, rollout, tool_calls
from openrlhf_tapo.sim.mechanism_study import ARMS, base_of
from openrlhf_tapo.sim.train import Arm, TrainConfig, train

SURE = 40.0  # a logit gap that makes a choice certain in float64


@pytest.fixture(autouse=True)
def one_thread():
    """The simulation is sized for one core; intra-op threads only add overhead on its tiny tensors."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _forced_policy(regime: Regime, mode: int, fmt: int = 0, query: int = 0, read: int = 0) -> Policy:
    """A policy that takes exactly the given choices (one run)."""
    policy = Policy.initial(regime, 1)
    with torch.no_grad():
        for table, choice in ((policy.mode, mode), (policy.format, fmt), (policy.query, query), (policy.read, read)):
            table.fill_(-SURE)
            table[..., choice] = SURE
    return policy


# (mode, format, query, read) -> expected reward, by hand: N = 6 candidates, p_known = 0 except in (c).
PATHS = {
    "direct answer": ((0, 0, 0, 0), lambda r: r.p_known + (1 - r.p_known) / r.num_answers),
    "malformed call": ((1, 1, 0, 0), lambda r: 1 / r.num_answers),
    "wrong query": ((1, 0, 2, 0), lambda r: 1 / r.num_answers),
    "right query, reads the fact": ((1, 0, 0, 0), lambda r: 1.0 if r.tool_useful else 1 / r.num_answers),
    "right query, reads a distractor": ((1, 0, 0, 1), lambda r: 0.0 if r.tool_useful else 1 / r.num_answers),
}


@pytest.mark.parametrize("regime", ["a_useful_weak_reader", "c_useless_tool"])
@pytest.mark.parametrize("path", list(PATHS))
def test_expected_reward_of_each_action_sequence(regime, path):
    regime = REGIMES[regime]
    choices, by_hand = PATHS[path]
    policy = _forced_policy(regime, *choices)
    assert expected_accuracy(policy, regime).item() == pytest.approx(by_hand(regime), abs=1e-12)
    # The sampled rewards of that path average to the same value (50k draws: within 4.5 standard errors).
    batch = rollout(policy, regime, torch.rand(1, 50_000, env.NUM_DRAWS, generator=torch.Generator().manual_seed(1)))
    p = by_hand(regime)
    assert abs(batch.reward.mean().item() - p) <= 4.5 * math.sqrt(p * (1 - p) / 50_000) + 1e-12
    acted = batch.mask[0].tolist()
    assert acted == [True, choices[0] == 1, choices[0] == 1 and choices[1] == 0, choices[:3] == (1, 0, 0)]


def test_initial_accuracy_by_hand():
    # (a): 0.5 * 1/6 + 0.5 * (0.9 * (0.7 * 0.15 + 0.3 / 6) + 0.1 / 6), the call path below answering directly.
    a = REGIMES["a_useful_weak_reader"]
    call_path = 0.9 * (0.7 * 0.15 + 0.3 / 6) + 0.1 / 6
    assert call_path < 1 / 6
    assert expected_accuracy(Policy.initial(a, 1), a).item() == pytest.approx(0.5 / 6 + 0.5 * call_path, abs=1e-12)
    # (c): answering directly (0.3 + 0.7 / 6) beats any call (1 / 6).
    c = REGIMES["c_useless_tool"]
    assert expected_accuracy(Policy.initial(c, 1), c).item() == pytest.approx(0.5 * (0.3 + 0.7 / 6) + 0.5 / 6)


def test_openrlhf_group_norm_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    # [1, 0, 0, 0]: mean 0.25, unbiased std 0.5; [1, 1, 0, 1]: mean 0.75, std 0.5.
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5, 0.5, 0.5, -1.5, 0.5], dtype=torch.float64)
    assert torch.allclose(openrlhf_group_advantages(rewards, 4), expected, atol=1e-8)
    random = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(0)).double()
    groups = random.view(-1, 8)
    by_formula = ((groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + 1e-9)).view(-1)
    assert torch.equal(openrlhf_group_advantages(random, 8), by_formula)
    with pytest.raises(ValueError, match="multiple of n_samples=8"):
        openrlhf_group_advantages(torch.zeros(12), 8)


def _batch(rows: list[tuple[int, int, int, int]], rewards: list[float]) -> Batch:
    actions = torch.tensor(rows)
    mask = torch.stack(
        [
            torch.ones(len(rows), dtype=torch.bool),
            actions[:, 0] == 1,
            (actions[:, 0] == 1) & (actions[:, 1] == 0),
            (actions[:, 0] == 1) & (actions[:, 1] == 0) & (actions[:, 2] == 0),
        ],
        1,
    )
    return Batch(
        actions=actions * mask,
        mask=mask,
        qtype=torch.zeros(len(rows), dtype=torch.long),
        reward=torch.tensor(rewards, dtype=torch.float64),
        old_log_probs=torch.zeros(len(rows), 4, dtype=torch.float64),
    )


def test_tool_calls_and_tapo_correction_by_hand():
    # Group 0: a success through the right query; failures through the right query, a wrong query, a direct answer.
    # Group 1: the same right query index, but another question: never a witness for group 0.
    batch = _batch(
        [(1, 0, 0, 0), (1, 0, 0, 1), (1, 0, 2, 0), (0, 0, 0, 0)]
        + [(1, 0, 0, 1), (1, 1, 0, 0), (0, 0, 0, 0), (1, 0, 0, 0)],
        [1, 0, 0, 0, 0, 0, 0, 1],
    )
    calls = tool_calls(batch, group_size=4)
    assert [c.traj for c in calls] == [0, 1, 2, 4, 7]  # row 5's call is malformed: TAPO cannot parse it
    assert calls[0].params == calls[1].params != calls[2].params
    assert calls[0].params != calls[3].params  # same query index, different question
    assert all(c.call_span == (1, 3) and c.turn_span == (0, 3) and c.turn == 0 for c in calls)

    advantages = openrlhf_group_advantages(batch.reward, 4)
    assert torch.allclose(advantages[:4], torch.tensor([1.5, -0.5, -0.5, -0.5], dtype=torch.float64))
    tokens = advantages.unsqueeze(-1).expand(-1, 4) * batch.mask
    corrected, stats = tapo_correct(tokens, batch.mask, torch.arange(8) // 4, batch.reward >= 1, calls, TAPOConfig())
    # Row 1: support 1/1, reference advantage 1.5, beta 0.8: min(0, -0.5 + 1.2) = 0 on its call turn only.
    assert corrected[1].tolist() == pytest.approx([0.0, 0.0, 0.0, -0.5])
    assert torch.equal(corrected[2:4], tokens[2:4])  # a wrong query and a direct answer have no witness
    # Group 1 = [0, 0, 0, 1]: row 4 failed through the right query that row 7 (its own group's success) made.
    assert corrected[4].tolist() == pytest.approx([0.0, 0.0, 0.0, -0.5])
    assert torch.equal(corrected[5:], tokens[5:])
    assert stats["corrected_calls"] == 2.0
    assert stats["failing_traj_correctable_frac"] == pytest.approx(2 / 6)


def _run(regime: str, arm: Arm, seeds=range(6), steps=60, group=8, trajectories=32) -> list[dict]:
    config = TrainConfig(steps=steps, group_size=group, trajectories=trajectories, record_every=10)
    runs, _ = train(REGIMES[regime], arm, config, list(seeds), openrlhf_group_advantages)
    return runs


def test_a_run_depends_on_its_seed_alone():
    arm = ARMS["grpo+tapo"]
    alone = _run("a_useful_weak_reader", arm, seeds=[3], steps=20)[0]
    beside = _run("a_useful_weak_reader", arm, seeds=[1, 3], steps=20)[1]
    again = _run("a_useful_weak_reader", arm, seeds=[3], steps=20)[0]
    assert alone["seed"] == beside["seed"] == 3
    assert alone == beside == again
    other = _run("a_useful_weak_reader", arm, seeds=[4], steps=20)[0]
    assert other["accuracy_curve"] != alone["accuracy_curve"]


def test_zero_advantages_leave_the_policy_unchanged():
    config = TrainConfig(steps=5, record_every=1)
    no_advantage = lambda rewards, n: torch.zeros_like(rewards)  # noqa: E731
    runs, tapo_steps = train(REGIMES["a_useful_weak_reader"], ARMS["grpo"], config, [0], no_advantage)
    assert len(set(runs[0]["accuracy_curve"])) == 1
    assert len(tapo_steps) == 5


def test_batch_scope_is_refused():
    arm = Arm("grpo+tapo_batch", "ppo", TAPOConfig(scope="batch"))
    with pytest.raises(ValueError, match="scope='group'"):
        train(REGIMES["a_useful_weak_reader"], arm, TrainConfig(steps=1), [0], openrlhf_group_advantages)


def _paired(regime: str, arm: str, metric: str, **kwargs) -> list[float]:
    base = _run(regime, ARMS[base_of(arm)], **kwargs)
    tapo = _run(regime, ARMS[arm], **kwargs)
    return [t[metric] - b[metric] for t, b in zip(tapo, base, strict=True)]


# The direction and size the full study measures in each regime (docs/results.md §1), on 6 seeds x 60 steps. A
# no-op TAPO gives exactly 0 (same random numbers), a wrong sign a loss; the bounds hold the size to the study's
# order (150 steps there, 60 here, measured 2026-12-06: a +0.015, b +0.014, c -0.004 / +0.010 calls, d +0.002,
# e +0.10 calls), so a credit several times too strong or too weak fails too.
def test_direction_useful_tool_weak_reader():
    diffs = _paired("a_useful_weak_reader", "grpo+tapo", "mean_accuracy")
    assert all(0.005 < d < 0.03 for d in diffs)


def test_direction_saturated_calls():
    diffs = _paired("b_saturated_calls", "grpo+tapo", "mean_accuracy")
    assert 0.005 < sum(diffs) / len(diffs) < 0.03


def test_direction_useless_tool_control():
    acc = _paired("c_useless_tool", "grpo+tapo", "mean_accuracy")
    calls = _paired("c_useless_tool", "grpo+tapo", "final_call_rate")
    assert -0.01 < sum(acc) / len(acc) < 0  # no accuracy gain from a useless tool, a small cost...
    assert 0 < sum(calls) / len(calls) < 0.05  # ...because TAPO keeps calling it


def test_direction_weak_format():
    diffs = _paired("d_weak_format", "grpo+tapo", "mean_accuracy")
    assert 0.0005 < sum(diffs) / len(diffs) < 0.01  # small at 60 steps: the gain comes late (+0.039 at 150)


def test_direction_slow_reader():
    calls = _paired("e_slow_reader", "grpo+tapo", "final_call_rate")
    acc = _paired("e_slow_reader", "grpo+tapo", "mean_accuracy")
    assert 0.05 < sum(calls) / len(calls) < 0.2
    assert abs(sum(acc)) / len(acc) < 0.002


def test_direction_sapo():
    sapo = _paired("a_useful_weak_reader", "sapo+tapo", "mean_accuracy")
    grpo = _paired("a_useful_weak_reader", "grpo+tapo", "mean_accuracy")
    assert all(0.005 < d < 0.03 for d in sapo)
    assert max(abs(a - b) for a, b in zip(sapo, grpo, strict=True)) < 1e-3  # the losses barely differ here


def test_simulate_cli_writes_resumable_cells_and_report(tmp_path, capsys):
    from openrlhf_tapo.cli import simulate

    argv = ["--out", str(tmp_path), "--regimes", "a_useful_weak_reader", "--arms", "grpo,grpo+tapo",
            "--group-sizes", "4", "--seeds", "2", "--steps", "6", "--no-sensitivity"]  # fmt: skip
    assert simulate.main(argv) == 0
    cells = sorted((tmp_path / "runs").glob("*.json"), key=lambda path: path.stem)
    assert [c.stem for c in cells] == [
        "a_useful_weak_reader__g4__lr0.2__grpo",
        "a_useful_weak_reader__g4__lr0.2__grpo+tapo",
    ]
    record = json.loads(cells[1].read_text())
    assert [r["seed"] for r in record["runs"]] == [0, 1]
    assert len(record["tapo_steps"]) == 6 and record["runs"][0]["steps"][-1] == 6
    report = (tmp_path / "report.md").read_text()
    assert "| a_useful_weak_reader | 4 |" in report
    assert all((tmp_path / f"sim_{name}.png").stat().st_size > 0 for name in ("accuracy", "call_rate"))
    before = {c: c.stat().st_mtime_ns for c in cells}
    capsys.readouterr()
    assert simulate.main(argv) == 0  # resumed: nothing to train again
    assert "2 already done" in capsys.readouterr().out
    assert {c: c.stat().st_mtime_ns for c in cells} == before
    with pytest.raises(SystemExit, match="another size"):
        simulate.main([*argv[:-2], "7", "--no-sensitivity"])


def test_gigpo_turns_of_the_simulation_by_hand():
    """The trainer's turns for GiGPO: the call turn and the read turn where acted; a direct answer acts once. The
    read turn's anchor state is the call that returned (query and observation), so it is shared by the rows of one
    question that made the same call."""
    from openrlhf_tapo.sim.train import _turns

    batch = _batch([(1, 0, 0, 0), (1, 0, 0, 1), (1, 0, 2, 0), (0, 0, 0, 0), (1, 1, 0, 0)], [1, 0, 0, 0, 0])
    regime = REGIMES["a_useful_weak_reader"]
    turns = _turns(regime, batch, tool_calls(batch, group_size=8))
    assert [(t.traj, t.turn, t.span) for t in turns] == [
        (0, 0, (0, 3)), (0, 1, (3, 4)), (1, 0, (0, 3)), (1, 1, (3, 4)), (2, 0, (0, 3)), (3, 0, (0, 3)),
        (4, 0, (0, 3)),
    ]  # fmt: skip
    assert turns[1].state == turns[3].state != () and all(t.state == () for t in turns if t.turn == 0)


def test_gigpo_with_omega_zero_is_grpo_bit_for_bit():
    from openrlhf_tapo.algorithms.gigpo import GiGPOConfig

    base = _run("a_useful_weak_reader", ARMS["grpo"], seeds=[0, 1], steps=15)
    off = _run("a_useful_weak_reader", Arm("gigpo0", "ppo", gigpo=GiGPOConfig(omega=0.0)), seeds=[0, 1], steps=15)
    on = _run("a_useful_weak_reader", Arm("gigpo", "ppo", gigpo=GiGPOConfig()), seeds=[0, 1], steps=15)
    strip = lambda runs: [{k: v for k, v in r.items() if k not in ("arm", "gigpo")} for r in runs]  # noqa: E731
    assert strip(off) == strip(base)
    assert [r["accuracy_curve"] for r in on] != [r["accuracy_curve"] for r in base]
