"""The demo's console: library noise goes to the log files, the terminal gets stage lines, bars and the summary."""

import os
import sys

import torch

from openrlhf_tapo.cli import demo
from openrlhf_tapo.runners import demo_stages, ray_subprocess
from openrlhf_tapo.task.console import Console, parse_global_step, quiet_output
from openrlhf_tapo.utils.step_line import step_line

# as OpenRLHF's PPOTrainer.fit logs it (numpy scalars print as np.float64(...) under numpy 2)
STEP_LINE = (
    "(PPOTrainer pid=81) [2026-11-29 12:00:01] ppo_trainer.py:560 INFO ✨ Global step 3: {'policy_loss': -0.0123, "
    "'rollout/reward_mean': 0.375, 'score': np.float64(0.25), 'tool_calls': 1.5, 'tapo/corrected_calls': 2.0, "
    "'vllm_kl': np.float64(-7.2e-05), 'timing/step_total': 14.2, 'entropy': nan}\n"
)


def test_global_step_lines_are_parsed():
    status = parse_global_step(STEP_LINE)
    assert status["step"] == 3 and status["rollout/reward_mean"] == 0.375 and status["score"] == 0.25
    assert status["vllm_kl"] == -7.2e-05 and status["tapo/corrected_calls"] == 2.0 and status["entropy"] != 0
    assert parse_global_step("(LLMRayActor pid=9) INFO vLLM is ready\n") is None
    shown = "reward 0.38, acc 0.25, tool calls 1.50, TAPO corrected 2, loss -0.0123, vllm_kl -7.2e-05"
    assert step_line(status) == shown  # the Ray run's bare names read as the in-process loop's
    ours = {"rollout/reward_mean": 0.375, "accuracy": 0.25, "agent/tool_calls": 1.5, "tapo/corrected_calls": 2.0}
    assert step_line({**ours, "policy_loss": -0.0123, "vllm_kl": -7.2e-05}) == shown


def test_quiet_output_keeps_library_noise_in_the_log(tmp_path, capfd):
    log = tmp_path / "demo.log"
    with quiet_output(log) as terminal:
        print("python print")
        os.write(1, b"C-level write\n")
        os.write(2, b"stderr write\n")
        print("FutureWarning: as warnings print it", file=sys.stderr)
        console = Console(terminal)
        with console.stage("1/6 task") as note:
            note.append("4 questions")
        with console.bar(2, "RL", "steps") as bar:
            bar.set_postfix_str("reward 0.50")
            bar.update(2)
    shown = capfd.readouterr()
    logged = log.read_text()
    for noise in ("python print", "C-level write", "stderr write", "FutureWarning"):
        assert noise in logged and noise not in shown.out + shown.err
    line = next(text for text in shown.out.splitlines() if text.startswith("1/6 task"))
    assert line.endswith(" s  4 questions")
    assert "2/2 steps" in shown.out and "reward 0.50" in shown.out
    print("after")  # stdout is the terminal again
    assert capfd.readouterr().out == "after\n"


def test_ray_output_goes_to_its_log_and_steps_to_the_callback(tmp_path):
    script = "echo 'INFO worker started (lots of Ray chatter)'; " + "".join(
        f'echo "{STEP_LINE.strip().replace("step 3", f"step {n}")}"; ' for n in (1, 2)
    )
    steps = []
    ray_subprocess.run_ray(["bash", "-c", script], dict(os.environ), tmp_path / "ray_train.log", steps.append)
    assert [s["step"] for s in steps] == [1, 2] and steps[0]["vllm_kl"] == -7.2e-05
    assert "lots of Ray chatter" in (tmp_path / "ray_train.log").read_text()


def test_demo_entry_point_sends_library_output_to_demo_log(tmp_path, monkeypatch, capfd):
    seen = {}

    def fake_run_demo(args, console):
        print("library noise")
        console.line("stage line")
        seen["args"] = args

    monkeypatch.setattr(demo_stages, "run_demo", fake_run_demo)
    threads = torch.get_num_threads()
    assert demo.main(["--run-dir", str(tmp_path / "run"), "--threads", str(threads)]) == 0
    assert "library noise" in (tmp_path / "run" / "demo.log").read_text()
    shown = capfd.readouterr().out
    assert "library noise" not in shown and "stage line" in shown


def test_summary_shows_the_failure_taxonomy_before_and_after_rl():
    """The eval responses' `failure/<kind>` logs become each kind's share of the first mode's trajectories, printed
    before -> after (docs/step_credit.md)."""
    from openrlhf_tapo.agent.failures import FAILURE_KINDS
    from openrlhf_tapo.task.report import format_summary, summarize

    def response(kind, score=0.0):
        logs = {"tool_calls": 1.0, **{f"failure/{k}": float(k == kind) for k in FAILURE_KINDS}}
        return {"scores": score, "extra_logs": logs}

    before = {"sampled": [response("wrong_answer"), response("wrong_answer"), response("malformed_call"),
                          response(None, 1.0)]}  # fmt: skip
    after = {"sampled": [response("wrong_answer"), response(None, 1.0), response(None, 1.0), response(None, 1.0)]}
    metrics = [{"rollout/reward_mean": 0.5}]
    summary = summarize(before, after, metrics)
    assert summary["eval_failures_before"] == {k: {"wrong_answer": 0.5, "malformed_call": 0.25}.get(k, 0.0)
                                               for k in FAILURE_KINDS}  # fmt: skip
    assert summary["eval_failures_after"]["wrong_answer"] == 0.25
    summary.update(eval_questions=4, tapo_total_corrected_calls=0.0)
    text = format_summary(summary)
    assert "eval failures by first error" in text
    assert "  wrong_answer                       0.500 -> 0.250" in text
