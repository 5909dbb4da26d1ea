"""The CPU profile (adapter/seam/cpu_profile.py): each patch, exercised on the real OpenRLHF 0.11.2 code path
it adapts. The patches change process-wide state, so they run in a fresh interpreter (tests/_cpu_profile_probe.py)
and the tests here read what it observed. The end-to-end check against a real vllm-cpu engine runs only where
vllm-cpu is installed (see docs/cpu_profile.md)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_tapo.adapter.seam import cpu_profile, ray_workers

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture(scope="module")
def probe() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in cpu_profile.CPU_PROFILE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(TESTS / "_cpu_profile_probe.py")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=REPO,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE_RESULT ")]
    assert done.returncode == 0 and lines, f"probe failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return json.loads(lines[-1].removeprefix("PROBE_RESULT "))


@pytest.mark.slow
def test_every_patch_applies_once(probe):
    names = [patch.patch_name for patch in cpu_profile.PATCHES]
    assert probe["applied"] == names
    assert probe["applied_again"] == names  # idempotent: a second call changes nothing


@pytest.mark.slow
def test_profile_environment_and_user_values_win(probe):
    assert probe["env"]["DS_ACCELERATOR"] == "cpu"
    assert probe["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert probe["env"]["VLLM_CPU_KVCACHE_SPACE"] == "7"  # set by the user before the profile: kept


@pytest.mark.slow
def test_flash_attn_stub_lets_openrlhf_models_import(probe):
    assert probe["flash_attn_module"] == "module"


@pytest.mark.slow
def test_cuda_calls_become_cpu(probe):
    assert probe["current_device"] == "cpu"
    assert probe["tensor_to_current_device"] == "cpu"
    assert probe["dynamo_imports"] is True  # one no-op per torch.cuda name, or torch._dynamo refuses to import


@pytest.mark.slow
def test_replay_buffer_targets_cpu_and_restores_current_device(probe):
    assert probe["replay_buffer_target_device"] == "cpu"
    assert probe["current_device_after_buffer"] == "cpu"


@pytest.mark.slow
def test_deepspeed_strategy_trains_on_cpu(probe):
    assert probe["mesh_device_type"] == "cpu"
    assert probe["dist_backend"] == "gloo"
    assert probe["all_reduce"] == 3.0  # world of one: the sum is the value
    assert probe["all_gather"] == [5.0]
    assert probe["optimizer_class"] == "torch.optim.adamw.AdamW"  # not DeepSpeed's JIT-built FusedAdam
    assert probe["shm_op_builder"] == "_noop"  # DeepSpeed's shared-memory op is not JIT-built
    assert probe["weights_moved"] > 0


@pytest.mark.slow
def test_training_and_rollouts_compute_in_float32(probe):
    # OpenRLHF's strategy was parsed with --ds.param_dtype bf16 and its Actor asked for bf16: both stay float32
    assert probe["ds_mixed_precision"] == [False, False]
    assert probe["trained_param_dtype"] == "torch.float32"
    assert probe["vllm_dtype"] == "float32"  # create_vllm_engines passes "bfloat16"


def test_profile_refuses_an_explicit_param_dtype():
    with pytest.raises(SystemExit, match="computes in float32.*remove --ds.param_dtype"):
        cpu_profile.main(["openrlhf_tapo.cli.train_ppo_ray", "--ds.param_dtype=bf16"])


@pytest.mark.slow
def test_weight_sync_group_broadcasts_bf16_over_gloo(probe):
    assert probe["ppo_actor_sync_fn"] == "gloo_stateless_init_process_group"
    assert probe["sync_received"] == {"0": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "1": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}


@pytest.mark.slow
def test_rollout_actor_starts_vllm_with_cpu_worker_extension(probe):
    assert probe["worker_extension_cls"] == cpu_profile.CPU_WORKER_EXTENSION
    assert probe["model_impl"] == "transformers"  # a VLM: vLLM's Transformers backend (no torchvision)
    assert probe["rollout_actor_bases"] == ["CPURolloutRayActor", "RolloutRayActor", "object"]


@pytest.mark.slow
def test_cpu_worker_wrap_receives_loads_and_repacks(probe):
    assert probe["worker_wrap_is_openrlhf_subclass"] is True
    assert probe["weight_kept_after_dispatch"] is True  # vllm-cpu would drop it (remove_weight=True)
    assert probe["worker_weight_after_sync"] == [[1.5, 1.5], [1.5, 1.5]]
    # after the last parameter, the kernel is rebuilt once from the NEW weight (sum 4 * 1.5), keeping the weight
    assert probe["repack_dispatch_calls"] == [[6.0, False]]


@pytest.mark.slow
def test_ray_init_starts_a_cpu_node_whose_workers_apply_the_profile(probe):
    (_, started), (_, explicit), (_, connect) = probe["ray_init_calls"]
    assert started["num_gpus"] >= 2 and started["num_cpus"] >= 4  # fake GPUs: OpenRLHF's bundles schedule
    env = started["runtime_env"]
    assert env["worker_process_setup_hook"] == ray_workers.SETUP_HOOK
    assert env["env_vars"][ray_workers.PATCH_SETS_ENV] == "cpu_profile"
    assert env["env_vars"]["A"] == "1" and env["env_vars"]["DS_ACCELERATOR"] == "cpu"  # the caller's and ours
    assert env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "7"  # the user's value reaches the workers
    assert env["working_dir"] == "/x"  # other runtime_env keys pass through
    assert explicit["num_cpus"] == 3  # the caller's explicit value wins
    assert "num_gpus" not in connect and connect["address"] == "auto"  # joining a cluster: no resources added
    assert connect["runtime_env"]["worker_process_setup_hook"] == ray_workers.SETUP_HOOK


def test_vllm_model_impl_choice(tmp_path, monkeypatch):
    from transformers import Qwen2_5_VLConfig, Qwen2Config

    monkeypatch.delenv(cpu_profile.MODEL_IMPL_ENV, raising=False)
    Qwen2Config(hidden_size=32, num_attention_heads=1, num_hidden_layers=1).save_pretrained(tmp_path / "text")
    Qwen2_5_VLConfig().save_pretrained(tmp_path / "vlm")
    assert cpu_profile.vllm_model_impl(str(tmp_path / "text")) == "auto"
    assert cpu_profile.vllm_model_impl(str(tmp_path / "vlm")) == "transformers"
    monkeypatch.setenv(cpu_profile.MODEL_IMPL_ENV, "vllm")
    assert cpu_profile.vllm_model_impl(str(tmp_path / "vlm")) == "vllm"


def test_vllm_model_impl_refuses_deepstack_models_on_cpu(tmp_path, monkeypatch):
    """vllm-cpu's Transformers backend drops Qwen3-VL's deepstack features (tests/test_qwen3_vl.py measures it): the
    CPU profile refuses such a model instead of training one model while sampling from another."""
    from openrlhf_tapo.task.tiny_model import build_tiny_vlm

    monkeypatch.delenv(cpu_profile.MODEL_IMPL_ENV, raising=False)
    corpus = ["<answer>Paris</answer> what city is this"] * 20
    model_dir = build_tiny_vlm(tmp_path / "qwen3", corpus, seed=0, family="qwen3_vl")
    with pytest.raises(ValueError, match="deepstack"):
        cpu_profile.vllm_model_impl(str(model_dir))
    monkeypatch.setenv(cpu_profile.MODEL_IMPL_ENV, "transformers")  # an explicit override wins
    assert cpu_profile.vllm_model_impl(str(model_dir)) == "transformers"


def test_checkpoint_names_revert_transformers_renaming():
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1, vocab_size=64)
    text["num_key_value_heads"] = 1
    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=1, out_hidden_size=32)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision))
    names = cpu_profile.checkpoint_names(model)
    assert names["model.language_model.embed_tokens.weight"] == "model.embed_tokens.weight"
    assert names["model.visual.patch_embed.proj.weight"] == "visual.patch_embed.proj.weight"
    assert len(set(names.values())) == len(names)


def _real_vllm_cpu() -> bool:
    if "vllm" in sys.modules and getattr(sys.modules["vllm"], "__file__", None) is None:
        return False  # the import stub (tests/conftest.py)
    return importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(not _real_vllm_cpu(), reason="needs vllm-cpu (docs/cpu_profile.md); CI's venv has the stub")
@pytest.mark.slow
def test_vllm_cpu_engine_follows_synced_weights(tmp_path):
    """A real vllm-cpu engine + CPUWorkerWrap's load/repack: after a sync, vLLM's log-probs match transformers'."""
    done = subprocess.run(
        [sys.executable, str(TESTS / "_cpu_profile_vllm_sync.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("SYNC_RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-6000:]
    result = json.loads(lines[-1].removeprefix("SYNC_RESULT "))
    assert result["hf_change"] > 0.3  # the perturbation moves the model's log-probs a lot
    assert result["vllm_vs_hf_after"] < 0.05  # and vLLM followed it (bf16 noise only)
