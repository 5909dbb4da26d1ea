"""Confidence intervals of the CPU study, checked against hand-computed values and published t tables."""

import math

import pytest

from openrlhf_tapo.eval.stats import betainc, expected_gain, mean_ci, paired_ci, t_cdf, t_quantile


@pytest.mark.parametrize(
    ("df", "t975"),
    [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045), (1000, 1.962)],
)
def test_t_quantile_matches_the_t_table(df, t975):
    assert t_quantile(0.975, df) == pytest.approx(t975, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-t975, abs=1e-3)  # symmetric


def test_t_cdf_known_values():
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert t_cdf(2.0, 2) == pytest.approx(0.5 + 2.0 / (2.0 * math.sqrt(6.0)))  # closed form for df = 2
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248)  # 1 - sum_{j<2} C(4,j) .4^j .6^(4-j)


def test_mean_ci_of_one_to_five():
    # mean 3, s = sqrt(2.5), half width = t_{.975,4} * s / sqrt(5) = 2.7764 * 0.70711 = 1.96324
    ci = mean_ci([1, 2, 3, 4, 5])
    assert ci.mean == 3.0 and ci.n == 5
    assert ci.std == pytest.approx(math.sqrt(2.5))
    assert (ci.low, ci.high) == (pytest.approx(1.03676, abs=1e-4), pytest.approx(4.96324, abs=1e-4))
    assert ci.fmt(2) == "3.00 ± 1.96"


def test_paired_ci_is_the_interval_of_the_per_question_differences():
    ci = paired_ci([0.0, 0.5, 0.5, 1.0], [1.0, 0.5, 1.0, 1.0])  # differences 1, 0, 0.5, 0
    assert ci.mean == pytest.approx(0.375) and ci.n == 4
    half = 3.1824 * math.sqrt((0.390625 + 0.140625 + 0.015625 + 0.140625) / 3) / 2  # t_{.975,3} s / sqrt(4)
    assert (ci.low, ci.high) == (pytest.approx(0.375 - half, abs=1e-4), pytest.approx(0.375 + half, abs=1e-4))
    with pytest.raises(ValueError, match="pair them"):
        paired_ci([0.0], [1.0, 0.0])


def test_expected_gain_adds_the_run_spread_and_the_question_spread():
    # run gains 1/3 and 1/6: s_g^2 = 1/72; seed-averaged per-question differences 0.5, 0, 0.25: s_d^2 = 1/16
    expected, one_run = expected_gain([0.0, 1.0, 0.5], [[1.0, 1.0, 0.5], [0.0, 1.0, 1.0]])
    assert expected.mean == one_run.mean == pytest.approx(0.25)
    var, parts = 1 / 72 / 2 + 1 / 16 / 3, [(1 / 72 / 2, 1), (1 / 16 / 3, 2)]  # = 1/36
    dof = var**2 / sum(v * v / d for v, d in parts)  # Welch-Satterthwaite: 2.909
    assert expected.std == pytest.approx(1 / 6) and dof == pytest.approx(2.909, abs=1e-3)
    assert expected.high - expected.mean == pytest.approx(t_quantile(0.975, dof) / 6)
    var1, parts1 = 1 / 72 * 1.5 + 1 / 48, [(1 / 72 * 1.5, 1), (1 / 48, 2)]  # one new run: s_g^2 (1 + 1/S)
    dof1 = var1**2 / sum(v * v / d for v, d in parts1)
    assert one_run.high - one_run.mean == pytest.approx(t_quantile(0.975, dof1) * math.sqrt(var1))
    assert one_run.low < expected.low < expected.high < one_run.high
    with pytest.raises(ValueError, match="one 'after' value per question"):
        expected_gain([0.0, 1.0], [[1.0, 1.0], [1.0]])


def test_mean_ci_degenerate_cases():
    same = mean_ci([0.4, 0.4, 0.4])
    assert (same.low, same.high) == (pytest.approx(0.4), pytest.approx(0.4))
    one = mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and "no CI" in one.fmt()
    with pytest.raises(ValueError, match="no samples"):
        mean_ci([])


# ------------------------------------------------------------------------------------- study aggregation


def _run(arm, seed, acc, correctable=0.0, corrected=0.0, curve=(0.1, 0.2)):
    from openrlhf_tapo.eval.study_stats import RunResult

    return RunResult(
        arm,
        seed,
        sampled_accuracy=acc,
        greedy_accuracy=acc / 2,
        tool_call_rate=0.5,
        train_accuracy_mean=acc,
        seconds=60.0,
        curves={
            "accuracy": list(curve),
            "tool_call_rate": [0.5, 0.6],
            "entropy": [2.0, 1.5],
            "correctable": [None, 0.5],
        },
        failing_traj_correctable=correctable,
        failing_calls_correctable=correctable / 2,
        failing_calls_corrected=corrected,
        failing_trajectories=10.0,
        failing_calls=20.0,
    )


def test_paired_comparison_uses_common_seeds_only():
    from openrlhf_tapo.eval.study_stats import paired_comparison

    results = [_run("ppo", s, a) for s, a in enumerate([0.2, 0.3, 0.4])]
    results += [_run("ppo+tapo", s, a) for s, a in enumerate([0.3, 0.3, 0.6, 0.9])]  # seed 3 has no base run
    c = paired_comparison(results, "ppo")
    assert c.seeds == [0, 1, 2]
    # differences 0.1, 0.0, 0.2: mean 0.1, s = 0.1, half width t_{.975,2} * 0.1 / sqrt(3) = 4.3027 * 0.057735
    assert c.paired.mean == pytest.approx(0.1)
    assert c.paired.half_width == pytest.approx(4.3027 * 0.1 / math.sqrt(3), abs=1e-3)
    assert paired_comparison(results, "ppo", "greedy_accuracy").paired.mean == pytest.approx(0.05)


def test_study_tables_summary_and_plots(tmp_path):
    from PIL import Image

    from openrlhf_tapo.eval.study_stats import comparison_table, correctable_table, plot_study, results_table, summary

    results = [_run("ppo", s, a, correctable=c) for s, (a, c) in enumerate([(0.2, 0.5), (0.4, 0.7)])]
    results += [_run("ppo+tapo", s, a, corrected=0.3) for s, a in enumerate([0.3, 0.5])]
    table = results_table(results)
    # sampled accuracy 0.2, 0.4: mean 0.3, half width 12.706 * 0.14142 / sqrt(2) = 1.271; greedy: half of it
    assert "| GRPO | 2 | 0.300 ± 1.271 | 0.150 ± 0.635 |" in table and "| GRPO + TAPO | 2 | 0.400 ± 1.271 |" in table
    # both seeds differ by +0.1 (greedy +0.05): a zero-width interval that excludes 0, in bold
    comparison = comparison_table(results)
    assert "| GRPO + TAPO vs GRPO | final accuracy, sampled (T = 1) | 2 | **+0.100 [+0.100, +0.100]** |" in comparison
    assert "| GRPO + TAPO vs GRPO | final accuracy, greedy | 2 | **+0.050 [+0.050, +0.050]** |" in comparison
    # pooled: (0.5 * 10 + 0.7 * 10) / 20 trajectories, (0.25 * 20 + 0.35 * 20) / 40 calls
    assert "| GRPO | 2 | 0.600 ± 1.271 | 0.300 ± 0.635 | 12/20 trajectories, 12/40 calls |" in correctable_table(
        results
    )
    agg = summary(results)
    assert agg["arms"]["ppo"]["sampled_accuracy"]["mean"] == pytest.approx(0.3)
    assert agg["paired"]["ppo+tapo - ppo"]["greedy_accuracy"]["mean"] == pytest.approx(0.05)
    assert agg["paired"]["ppo+tapo - ppo"]["greedy_accuracy"]["seeds"] == [0, 1]
    for path in plot_study(results, tmp_path):
        assert path.stat().st_size < 200_000
        with Image.open(path) as img:
            assert img.format == "PNG"


def test_run_curves_mark_steps_without_failing_trajectories():
    from openrlhf_tapo.eval.study_stats import run_curves

    steps = [
        {"accuracy": 0.25, "tool_call_rate": 1.0, "policy/entropy": 1.5, "tapo/failing_trajectories": 0.0},
        {"accuracy": 0.5, "tool_call_rate": 0.5, "policy/entropy": 1.0, "tapo/failing_trajectories": 2.0}
        | {"tapo/failing_traj_correctable_frac": 0.5},
    ]
    assert run_curves(steps) == {
        "accuracy": [0.25, 0.5],
        "tool_call_rate": [1.0, 0.5],
        "entropy": [1.5, 1.0],
        "correctable": [None, 0.5],
    }


def test_signed_and_band():
    from openrlhf_tapo.eval.stats import band, signed

    assert signed(mean_ci([0.1, 0.3])) == "+0.200 [-1.071, +1.471]"  # 12.706 * 0.14142 / sqrt(2) = 1.2706
    assert signed(mean_ci([0.2, 0.3, 0.4])) == "**+0.300 [+0.052, +0.548]**"  # 4.3027 * 0.1 / sqrt(3) = 0.2484
    assert signed(mean_ci([-0.5])) == "-0.500 (n=1)"
    # step 1: 1, 3 -> mean 2 ± 12.706 * 1.41421 / 1.41421; step 2: one value (None skipped) -> width 0; cut to 2
    mean, low, high = band([[1.0, None, 7.0], [3.0, 4.0]])
    assert mean == [2.0, 4.0] and high[1] == low[1] == 4.0
    assert (low[0], high[0]) == (pytest.approx(2 - 12.706, abs=1e-3), pytest.approx(2 + 12.706, abs=1e-3))
    assert math.isnan(band([[None], [None]])[0][0])


def test_tapo_counts_pool_over_steps_instead_of_averaging_fractions():
    from openrlhf_tapo.eval.study_stats import tapo_counts

    keys = ("failing_trajectories", "failing_traj_correctable_frac", "failing_calls")
    keys += ("failing_calls_correctable_frac", "corrected_calls", "mean_transferred_credit")
    rows = [(4.0, 0.5, 8.0, 0.25, 2.0, 0.3), (0.0, 0.0, 0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 2.0, 1.0, 1.0, 0.6)]
    steps = [{f"tapo/{k}": v for k, v in zip(keys, row, strict=True)} for row in rows]
    c = tapo_counts(steps)
    assert c["failing_traj_correctable"] == pytest.approx((2 + 1) / 5)  # averaging fractions would give 0.5
    assert c["failing_calls_correctable"] == pytest.approx((2 + 2) / 10)
    assert c["failing_calls_corrected"] == pytest.approx(3 / 10)
    assert c["transferred_credit"] == pytest.approx((0.3 * 2 + 0.6 * 1) / 3)
    assert tapo_counts([])["failing_traj_correctable"] == 0.0


def test_a_shares_count_is_a_whole_number_and_a_missing_statistic_counts_zero():
    """The one rebuild of counts from TAPO's shares (the study's pooling and the simulation's step statistics)."""
    from openrlhf_tapo.eval.tapo_counts import stat_counts

    step = {"failing_traj_correctable_frac": 1 / 49, "failing_trajectories": 49.0, "corrected_calls": 3.0}
    assert (1 / 49) * 49 != 1  # the share times its denominator is not the count in floating point
    counts = stat_counts(step)
    assert counts["correctable_trajectories"] == 1 and counts["failing_trajectories"] == 49.0
    assert counts["corrected_calls"] == 3.0 and counts["failing_calls"] == counts["correctable_calls"] == 0
    assert stat_counts({f"tapo/{k}": v for k, v in step.items()}, "tapo/") == counts


def test_step_arms_are_paired_with_the_arm_without_their_last_estimator(tmp_path):
    """GiGPO vs GRPO, GiGPO + TAPO vs GiGPO, the turn reward vs GRPO: each arm against itself minus its last
    estimator, and the study builds each arm's run spec with its estimators (TAPO measuring at beta 0 elsewhere)."""
    from types import SimpleNamespace

    from openrlhf_tapo.algorithms.gigpo import GiGPOConfig
    from openrlhf_tapo.algorithms.turn_reward import TurnRewardConfig
    from openrlhf_tapo.eval.study_stats import arm_label, arm_parts, comparison_table, plot_study, summary
    from openrlhf_tapo.runners.study_plan import rl_config

    accs = {"ppo": [0.2, 0.4], "ppo+gigpo": [0.3, 0.6], "ppo+gigpo+tapo": [0.4, 0.6], "ppo+turn_reward": [0.2, 0.3]}
    results = [_run(arm, s, a) for arm, values in accs.items() for s, a in enumerate(values)]
    table = comparison_table(results)
    # differences 0.1, 0.2: mean 0.15, half width 12.706 * 0.0707 / sqrt(2) = 0.635
    assert "| GRPO + GiGPO vs GRPO | final accuracy, sampled (T = 1) | 2 | +0.150 [-0.485, +0.785] |" in table
    assert "| GRPO + GiGPO + TAPO vs GRPO + GiGPO | final accuracy, sampled (T = 1) | 2 |" in table
    assert "| GRPO + turn reward vs GRPO |" in table and "TAPO vs GRPO |" not in table.replace("GiGPO + TAPO", "")
    assert set(summary(results)["paired"]) == {
        "ppo+gigpo - ppo",
        "ppo+gigpo+tapo - ppo+gigpo",
        "ppo+turn_reward - ppo",
    }
    assert len(plot_study(results, tmp_path)) >= 1
    assert arm_parts("ppo+gigpo+tapo") == ("ppo", ("gigpo", "tapo")) and arm_label("sapo") == "SAPO"
    with pytest.raises(ValueError, match="unknown part"):
        arm_parts("ppo+gae")

    args = SimpleNamespace(beta=0.8, theta=0.8, alpha_min=0.25, span="turn", steps=2, prompts_per_step=2, n_samples=4,
                           updates_per_step=1, lr=5e-4)  # fmt: skip
    both = rl_config("ppo+gigpo+tapo", 3, args)
    assert both.step_credit == {"gigpo": GiGPOConfig()} and both.tapo.beta == 0.8 and both.seed == 3
    turn = rl_config("ppo+turn_reward", 0, args)
    assert turn.step_credit == {"turn_reward": TurnRewardConfig()} and turn.tapo.beta == 0.0 and turn.tapo_enable
    assert rl_config("ppo", 0, args).step_credit == {}


def test_failure_taxonomy_table_and_stacked_plot(tmp_path):
    from PIL import Image

    from openrlhf_tapo.eval.study_stats import failures_table, plot_study

    before = {"malformed_call": 0.10, "wrong_answer": 0.40, "no_call": 0.05}
    results = []
    for seed, (wrong, malformed) in enumerate([(0.20, 0.10), (0.30, 0.00)]):
        run = _run("ppo+gigpo", seed, 0.5)
        run.eval_failures = {"malformed_call": malformed, "wrong_answer": wrong, "no_call": 0.0}
        results.append(run)
    results.append(_run("ppo", 0, 0.5))  # a run recorded without the taxonomy: its arm gets no column
    table = failures_table(results, before)
    assert table.splitlines()[0] == "| first error | warm start | GRPO + GiGPO |"
    # wrong_answer after RL: 0.2, 0.3 -> mean 0.25, half width 12.706 * 0.070711 / sqrt(2) = 0.635
    assert "| wrong_answer | 0.400 | 0.250 ± 0.635 |" in table
    assert "| malformed_call | 0.100 | 0.050 ± 0.635 |" in table
    paths = plot_study(results, tmp_path, before)
    assert [p.name for p in paths] == ["curves.png", "paired_differences.png", "failures.png"]
    with Image.open(paths[-1]) as img:
        assert img.format == "PNG"
    assert [p.name for p in plot_study(results, tmp_path / "none")] == ["curves.png", "paired_differences.png"]
