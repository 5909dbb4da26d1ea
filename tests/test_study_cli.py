"""`python -m openrlhf_tapo.cli.study` end to end at a tiny size: task, warm start, gates, two paired runs, report;
then a second call that must reuse all of it and run nothing, and a third that stops at its budget."""

import json

import pytest
import torch

from openrlhf_tapo.cli import study
from openrlhf_tapo.runners import study_plan, study_pool, study_runs

TINY = [
    "--entities", "24", "--num-eval", "8", "--warm-steps", "5", "--warm-batch", "8", "--steps", "1",
    "--prompts-per-step", "2", "--n-samples", "2", "--eval-samples", "2", "--gate-prompts", "2",
    "--seeds-grpo", "1", "--seeds-other", "1", "--arms", "ppo,ppo+tapo",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The study run twice on one OUT (the second call must find everything done), counting the runs each ran."""
    out = tmp_path_factory.mktemp("study")
    calls: list[list[tuple[str, int]]] = []
    real_run_one = study_pool.run_one

    def counting(arm, seed, *rest):
        calls[-1].append((arm, seed))
        return real_run_one(arm, seed, *rest)

    threads = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.setattr(study_pool, "run_one", counting)
    try:
        for _ in range(2):
            calls.append([])
            assert study.main(["--out", str(out), *TINY]) == 0
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return out, calls


@pytest.mark.slow
def test_second_call_reuses_task_warm_start_gates_and_finished_runs(tiny_study):
    out, calls = tiny_study
    assert calls[0] == [("ppo", 0), ("ppo+tapo", 0)]  # seed-major, base arm first
    assert calls[1] == []  # resumed: both runs were finished
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    for arm in ("ppo", "ppo_tapo"):
        metrics = (out / "runs" / arm / "seed0" / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == 1 and "policy/entropy" in json.loads(metrics[0])
    assert (out / "task" / "kb_permuted" / "index").is_dir()


@pytest.mark.slow
def test_summary_has_the_gates_and_the_arms(tiny_study):
    out, _ = tiny_study
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["gates"]) == {
        "well_formed_calls",
        "follows_tools_heldout",
        "follows_tools_train",
        "tool_following_train",
        "sampled_accuracy",
        "correctable",
    }
    details = summary["gate_details"]
    assert details["tool_following"]["answers"] == details["tool_following_train"]["answers"] == 8 * 2
    assert 0.0 <= details["values"]["tool_following"] <= 1.0  # the old ratio, kept as a field
    for gate in summary["gates"].values():
        assert 0.0 <= gate["value"] <= 1.0 and isinstance(gate["passed"], bool)
    assert set(summary["arms"]) == {"ppo", "ppo+tapo"}
    assert summary["arms"]["ppo"]["seeds"] == [0]
    for metric in ("sampled_accuracy", "greedy_accuracy", "train_accuracy_mean"):
        assert 0.0 <= summary["arms"]["ppo+tapo"][metric]["mean"] <= 1.0
        assert summary["paired"]["ppo+tapo - ppo"][metric]["seeds"] == [0]
    assert (summary["runs_finished"], summary["runs_planned"]) == (2, 2)


@pytest.mark.slow
def test_the_gates_eval_is_the_paired_before_of_every_run(tiny_study):
    out, _ = tiny_study
    gates = json.loads((out / "gates.json").read_text())
    before = gates["eval_question_scores"]
    assert gates["seed"] == study_runs.EVAL_SEED and len(before) == 8  # the runs' eval seeds, one score per question
    assert sum(before) / 8 == pytest.approx(gates["values"]["sampled_accuracy"])
    for line in (out / "results.jsonl").read_text().splitlines():
        run = json.loads(line)
        assert len(run["eval_question_scores"]) == 8
        assert sum(run["eval_question_scores"]) / 8 == pytest.approx(run["sampled_accuracy"])


@pytest.mark.slow
def test_report_puts_gates_first_and_has_the_paired_table(tiny_study):
    out, _ = tiny_study
    report = (out / "study.md").read_text()
    assert report.index("## Gates") < report.index("## Per arm") < report.index("## TAPO minus base")
    assert "| GRPO + TAPO vs GRPO | final accuracy, sampled (T = 1) | 1 |" in report
    assert "| GRPO + TAPO vs GRPO | final accuracy, greedy | 1 |" in report
    for png in ("curves.png", "paired_differences.png"):
        assert f"]({png})" in report and (out / png).stat().st_size > 0


@pytest.mark.slow
def test_budget_stops_before_the_next_run_and_a_changed_size_is_refused(tiny_study):
    out, calls = tiny_study
    more = [*TINY, "--budget-min", "0"]
    more[more.index("--seeds-grpo") + 1] = "2"  # more seeds extend the study
    assert study.main(["--out", str(out), *more]) == 0
    assert "Stopped by --budget-min 0 before ppo seed 1." in (out / "study.md").read_text()
    assert json.loads((out / "summary.json").read_text())["runs_planned"] == 4
    changed = [*TINY]
    changed[changed.index("--steps") + 1] = "2"
    with pytest.raises(SystemExit, match="other settings"):
        study.main(["--out", str(out), *changed])


def test_planned_runs_are_seed_major_with_per_family_seed_counts():
    args = study.parse_args(["--seeds-grpo", "3", "--seeds-other", "1", "--arms", "ppo,ppo+tapo,sapo,sapo+tapo"])
    assert study_plan.planned_runs(args) == [
        ("ppo", 0), ("ppo+tapo", 0), ("sapo", 0), ("sapo+tapo", 0),
        ("ppo", 1), ("ppo+tapo", 1), ("ppo", 2), ("ppo+tapo", 2),
    ]  # fmt: skip
    args.seed_list = "2,0"
    assert study_plan.planned_runs(args) == [("ppo", 0), ("ppo+tapo", 0), ("sapo", 0), ("sapo+tapo", 0)] + [
        ("ppo", 2),
        ("ppo+tapo", 2),
    ]


def test_base_arms_measure_with_beta_zero():
    args = study.parse_args(["--beta", "0.5"])
    study_plan.resolve_defaults(args)
    assert study_plan.rl_config("sapo", 3, args).tapo.beta == 0.0
    tapo = study_plan.rl_config("sapo+tapo", 3, args)
    assert (tapo.tapo.beta, tapo.tapo_enable, tapo.policy_loss_type, tapo.seed) == (0.5, True, "sapo", 3)


def test_updates_per_step_reaches_the_run_and_old_outs_count_as_one(tmp_path):
    args = study.parse_args(["--updates-per-step", "2"])
    study_plan.resolve_defaults(args)
    assert study_plan.rl_config("sapo", 0, args).train_batch_size() == 32  # 8 prompts x 8 rollouts in 2 updates
    old = study.parse_args([])
    study_plan.resolve_defaults(old)
    saved = {k: v for k, v in vars(old).items() if k not in study_plan.SCHEDULE_FLAGS and k != "updates_per_step"}
    (tmp_path / "config.json").write_text(json.dumps(saved))  # a study started before the flag existed
    study_plan.check_config(old, tmp_path)  # ran with one update per step: the same settings
    with pytest.raises(SystemExit, match=r"other settings \(saved, now\): \{'updates_per_step': \(None, 2\)\}"):
        study_plan.check_config(args, tmp_path)


@pytest.mark.slow
def test_the_final_sampled_eval_draws_the_same_random_numbers_for_every_policy(tiny_study):
    """Arms are compared on fixed sampling seeds: the same policy evaluated twice gives the same trajectories."""
    from openrlhf_tapo.adapter.inprocess.agent_rollouts import evaluate
    from openrlhf_tapo.adapter.inprocess.trainer import load_actor
    from openrlhf_tapo.agent.executor import AgentExecutor
    from openrlhf_tapo.agent.hf_engine import HFGenerationEngine

    out, _ = tiny_study
    args = study.parse_args(["--out", str(out), *TINY])
    study_plan.resolve_defaults(args)
    s = study_runs.prepare(args, out, print)  # reuses the task and the warm start
    actor = load_actor(str(s.warm_dir))
    ev = (AgentExecutor(s.agent_config), s.rows("eval")[:2], s.processor, HFGenerationEngine(actor.model, s.processor))
    ev += (s.openrlhf_args(), 1536, 1.0, 1)

    def tokens(seed):
        return [r["observation_tokens"] for r in evaluate(*ev, seed=seed)[1]]

    first = tokens(study_runs.EVAL_SEED)
    assert tokens(study_runs.EVAL_SEED) == first
    assert tokens(study_runs.EVAL_SEED + 1) != first


def test_the_select_split_must_exist_to_be_evaluated(capsys):
    with pytest.raises(SystemExit):
        study.parse_args(["--eval-split", "select"])
    assert "--num-select" in capsys.readouterr().err
    args = study.parse_args(["--num-select", "64", "--eval-split", "select"])
    study_plan.resolve_defaults(args)
    assert study_plan.task_config(args).questions.num_select == 64
