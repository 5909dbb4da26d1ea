"""adapter/checks/placement.py: the GPUs and CPUs OpenRLHF 0.11.2's train() reserves for a flag set (hand-computed from
how it places its actors), and the launcher's refusal of a Ray cluster too small for them."""

import pytest
import ray
from _launch_inputs import launch_inputs

from openrlhf_tapo.adapter.checks import placement
from openrlhf_tapo.adapter.stage.openrlhf_args import parse_openrlhf_args
from openrlhf_tapo.cli import train_ppo_ray as cli

# A GRPO job with our agent (so no reward model): the base of every flag set below but the critic's (GAE).
GRPO = "--actor.model_name_or_path dummy --rollout.batch_size 16 --train.agent_func_path agent.py "
GRPO += "--algo.advantage.estimator group_norm --rollout.n_samples_per_prompt 4"
CPU_SCRIPT = GRPO + (
    " --actor.num_nodes 1 --actor.num_gpus_per_node 1 --vllm.num_engines 1 --vllm.tensor_parallel_size 1 "
    "--algo.kl.init_coef 0"
)
# PPO with a critic (gae) and a reward model
GAE = (
    "--actor.model_name_or_path dummy --rollout.batch_size 16 --reward.model_name_or_path rm "
    "--algo.advantage.estimator gae --algo.kl.init_coef 0 --vllm.num_engines 2 --actor.num_gpus_per_node 2 "
    "--critic.num_gpus_per_node 2 --reward.num_gpus_per_node 2"
)


def _placement(flags: str) -> placement.Placement:
    return placement.job_placement(parse_openrlhf_args(flags.split()))


# case: (flags, the slot groups train() reserves, GPUs in all)
CASES = {
    # examples/scripts/train_tapo_cpu.sh: one actor rank and one vLLM engine, no reference (KL 0)
    "cpu script": (CPU_SCRIPT, [("actor", 1), ("vLLM engines", 1)], 2),
    # common_search_agent.sh's hybrid engine: actor, reference and 8 vLLM engines on the same 8 GPUs
    "gpu scripts": (
        GRPO + " --actor.num_gpus_per_node 8 --ref.num_gpus_per_node 8 --vllm.num_engines 8 --algo.kl.init_coef 0.001 "
        "--train.colocate_all",
        [("actor + reference + vLLM engines", 8)],
        8,
    ),
    # nothing colocated: 2 x 4 actor ranks, 1 x 2 reference ranks, 2 engines of tensor-parallel 2
    "separate": (
        GRPO + " --actor.num_nodes 2 --actor.num_gpus_per_node 4 --ref.num_gpus_per_node 2 --algo.kl.init_coef 0.01 "
        "--vllm.num_engines 2 --vllm.tensor_parallel_size 2",
        [("actor", 8), ("reference", 2), ("vLLM engines", 4)],
        14,
    ),
    "actor + ref colocated": (
        GRPO + " --actor.num_gpus_per_node 4 --ref.num_gpus_per_node 4 --algo.kl.init_coef 0.01 --vllm.num_engines 2 "
        "--vllm.tensor_parallel_size 2 --train.colocate_actor_ref",
        [("actor + reference", 4), ("vLLM engines", 4)],
        8,
    ),
    # async training colocates only the DeepSpeed models; vLLM gets its own GPUs
    "async colocate_all": (
        GRPO + " --actor.num_gpus_per_node 4 --vllm.num_engines 4 --algo.kl.init_coef 0 --train.colocate_all "
        "--train.async_enable",
        [("actor", 4), ("vLLM engines", 4)],
        8,
    ),
    # PPO with a critic and a reward model
    "critic + reward model": (GAE, [("actor", 2), ("vLLM engines", 2), ("critic", 2), ("reward model", 2)], 8),
    "critic + reward colocated": (
        GAE + " --train.colocate_critic_reward",
        [("actor", 2), ("vLLM engines", 2), ("critic + reward model", 2)],
        6,
    ),
    "critic + reward in colocate_all": (
        GAE + " --train.colocate_all",
        [("actor + vLLM engines + critic + reward model", 2)],
        2,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_placement_follows_openrlhf(case):
    _, groups, gpus = CASES[case]
    got = _placement(CASES[case][0])
    assert [(group.what, group.slots) for group in got.groups] == groups
    assert (got.gpus, got.cpus) == (gpus, gpus + 1)  # one slot CPU per GPU, plus the PPO controller's


def test_enough_free_resources_pass():
    cpu_script = _placement(CPU_SCRIPT)
    assert placement.shortfall(cpu_script, {"GPU": 2.0, "CPU": 3.0}, {"GPU": 2.0, "CPU": 3.0}, "here") is None


def test_a_small_cluster_is_refused_with_both_numbers_and_the_flags():
    message = placement.shortfall(
        _placement(CPU_SCRIPT), {"GPU": 1.0, "CPU": 4.0}, {"GPU": 1.0, "CPU": 4.0}, "the Ray cluster at h:6379"
    )
    assert "this job reserves 2 GPUs and 3 CPUs at once" in message
    assert "the Ray cluster at h:6379 has 1 GPU and 4 CPUs free (of 1 GPU and 4 CPUs)" in message
    assert "vLLM engines: 1 GPU (--vllm.num_engines 1 x --vllm.tensor_parallel_size 1)" in message
    assert "actor: 1 GPU (--actor.num_nodes 1 x --actor.num_gpus_per_node 1)" in message
    assert "--train.colocate_all" in message and "Other jobs" not in message


def test_cpus_count_too_and_a_busy_cluster_is_told_from_a_small_one():
    # 2 GPUs free but only 2 CPUs: the PPO controller could not be scheduled after the two slots
    message = placement.shortfall(_placement(CPU_SCRIPT), {"GPU": 2.0, "CPU": 2.0}, {"GPU": 8.0, "CPU": 16.0}, "c")
    assert "has 2 GPUs and 2 CPUs free (of 8 GPUs and 16 CPUs). Other jobs hold the rest" in message


def test_colocated_job_is_not_told_to_colocate():
    message = placement.shortfall(
        _placement(CASES["gpu scripts"][0]), {"GPU": 4.0, "CPU": 64.0}, {"GPU": 4.0, "CPU": 64.0}, "c"
    )
    assert "8 GPUs" in message and "--train.colocate_all, which" not in message


@pytest.fixture
def one_gpu_ray_session():
    """A real local Ray session with 1 (declared) GPU, as `ray start --head --num-gpus 1` gives."""
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_launcher_refuses_a_ray_session_too_small_before_placing_anything(one_gpu_ray_session, tmp_path, capsys):
    inputs = launch_inputs(tmp_path)
    argv = [
        *CPU_SCRIPT.split(), "--actor.model_name_or_path", str(inputs.model), "--agent.config",
        str(inputs.agent_config), "--tapo.enable", "--data.prompt_dataset", str(inputs.data), "--data.input_key",
        "prompt", "--data.label_key", "label", "--data.image_key", "images", "--data.max_images_per_prompt", "16",
        "--ckpt.output_dir", str(inputs.save),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "this job reserves 2 GPUs and 3 CPUs at once" in err and "has 1 GPU and 4 CPUs free" in err
    assert ray.util.placement_group_table() == {}  # refused before OpenRLHF created a placement group


def test_no_running_cluster_means_no_check(monkeypatch):
    """Without RAY_ADDRESS and without a `ray start` cluster, ray.init() starts its own node: nothing to join."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", "/nonexistent-ray-tmp")  # no ray_current_cluster file to find
    assert placement.cluster_to_join() is None
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert placement.cluster_to_join() == "10.1.2.3:6379"
