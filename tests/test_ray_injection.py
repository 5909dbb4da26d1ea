"""Our experience maker and PolicyLoss reach REAL Ray actor processes (local CPU Ray cluster).

Ray is initialised the way our launcher does it (`ray_workers.requested("injection", ...)` around the `ray.init`
that OpenRLHF's `train()` would call), with args resolved by our CLI. Inside actor processes, OpenRLHF's own classes
are built through their own constructors: `BasePPOTrainer.__init__` (what `PPOTrainer` and the async `TrainingActor`
run) must create our experience maker, `ActorPPOTrainer.__init__` (what every `PolicyModelActor` runs) must hold our
loss with the command line's SAPO temperature. The nested actor stands for `PPOTrainerAsync`, which starts its
`TrainingActor` from inside its own actor process: its setup hook must have run too.
"""

import json
import os
import socket
import sys
from types import SimpleNamespace

import pytest

from openrlhf_tapo.adapter.seam import inject, ray_workers
from openrlhf_tapo.cli.train_ppo_ray import resolve_args

ray = pytest.importorskip("ray")


class HookState:
    def get(self):
        return {"pid": os.getpid(), "hook_installed": inject.hook_installed()}


class TrainerProbe:
    """Builds OpenRLHF's trainers in its own (worker) process and reports what they hold."""

    def report(self, args):
        import torch
        import torch.distributed as dist
        from openrlhf.trainer.ppo_trainer import BasePPOTrainer
        from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer

        strategy = SimpleNamespace(args=args)
        trainer = BasePPOTrainer(strategy, None, None, None, None, None, tokenizer=None)
        maker = trainer.experience_maker

        if not dist.is_initialized():
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        # CPU torch has no CUDA: OpenRLHF's replay buffer asks for the current device, __init__ ends with a sync.
        torch.cuda.current_device = lambda: 0
        torch.cuda.synchronize = lambda *a, **k: None
        actor_trainer = ActorPPOTrainer(strategy, None, None, None, None, micro_train_batch_size=1)
        loss_fn = actor_trainer.actor_loss_fn
        # ratio 1, advantages +1 / -1: sapo gives -2A/tau per token, token-mean over the two tokens.
        zeros = torch.zeros(1, 2)
        loss = loss_fn(zeros, zeros, torch.tensor([[1.0, -1.0]]), action_mask=torch.ones(1, 2))[0].item()

        return {
            "pid": os.getpid(),
            "patched": list(inject.PATCHED),
            "maker": f"{type(maker).__module__}.{type(maker).__qualname__}",
            "beta": maker.credit_configs["tapo"].beta,
            "loss": f"{type(loss_fn).__module__}.{type(loss_fn).__qualname__}",
            "loss_type": loss_fn.policy_loss_type,
            "loss_value": loss,
            "agent_config": os.environ.get(inject.AGENT_CONFIG_ENV),
            # Like PPOTrainerAsync starting its TrainingActor: an actor started from inside an actor process.
            "nested": ray.get(ray.remote(num_cpus=0)(HookState).remote().get.remote()),
        }


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    agent_yaml = tmp_path_factory.mktemp("agent") / "agent.yaml"
    agent_yaml.write_text("max_turns: 3\n")
    args = resolve_args(
        [
            "--actor.model_name_or_path", "dummy",
            "--algo.advantage.estimator", "group_norm",
            "--rollout.n_samples_per_prompt", "4",
            "--rollout.batch_size", "2",
            "--actor.num_gpus_per_node", "1",
            "--algo.kl.use_loss",
            "--algo.kl.estimator", "k3",
            "--tapo.enable",
            "--tapo.beta", "0.5",
            "--actor.policy_loss_type", "sapo",
            "--actor.sapo_tau_pos", "2.0",
            "--agent.config", str(agent_yaml),
        ]
    )  # fmt: skip
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this test module is not importable in workers
    with ray_workers.requested("injection", inject.worker_env_vars(args.agent.config)):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield args
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_injection_reaches_actor_processes(session):
    args = session
    probe = ray.remote(num_cpus=0)(TrainerProbe).remote()
    seen = ray.get(probe.report.remote(args), timeout=300)
    assert seen["patched"] == ["openrlhf.trainer.ppo_trainer", "openrlhf.trainer.ray.ppo_actor"]
    assert seen["maker"] == "openrlhf_tapo.adapter.stage.experience_stage.TAPOExperienceMaker"
    assert seen["beta"] == 0.5
    assert seen["loss"] == "openrlhf_tapo.adapter.stage.openrlhf_loss.PolicyLoss"
    assert seen["loss_type"] == "sapo"
    assert seen["loss_value"] == pytest.approx((-2 * 1.0 / 2.0 + 2 * 1.0 / 1.05) / 2)
    assert seen["agent_config"] == args.agent.config
    assert seen["nested"]["hook_installed"]
    assert len({os.getpid(), seen["pid"], seen["nested"]["pid"]}) == 3
    # The driver was never patched: what the actor holds came through the worker setup hook.
    assert not inject.hook_installed()


@pytest.mark.slow
def test_session_check_passes_with_our_hook_and_names_a_wrong_agent_config(session):
    ray_workers.require_in_session("injection", inject.worker_env_vars(session.agent.config))
    with pytest.raises(RuntimeError, match="OPENRLHF_TAPO_AGENT_CONFIG"):
        ray_workers.require_in_session("injection", inject.worker_env_vars("/elsewhere/agent.yaml"))


def test_merge_leaves_keys_the_submitted_job_sets_to_the_job(monkeypatch):
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    from ray.runtime_env.runtime_env import _merge_runtime_env

    job = {"env_vars": {inject.AGENT_CONFIG_ENV: "/job/agent.yaml", "NCCL_DEBUG": "INFO"}}
    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, json.dumps({"runtime_env": job}))
    openrlhf_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "true", "NCCL_DEBUG": "WARN"}}
    ours = ray_workers.worker_runtime_env({"injection": inject.worker_env_vars("/ours/agent.yaml")})
    merged = ray_workers.merge_runtime_env(openrlhf_env, ours)
    assert merged == {
        "worker_process_setup_hook": ray_workers.SETUP_HOOK,
        "env_vars": {"TOKENIZERS_PARALLELISM": "true", ray_workers.PATCH_SETS_ENV: "injection"},
    }
    # Ray's own merge of job and driver runtime_env (what ray.init does under `ray job submit`) accepts it.
    assert _merge_runtime_env(job, merged) is not None

    job["worker_process_setup_hook"] = "their.hook"
    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, json.dumps({"runtime_env": job}))
    with pytest.raises(RuntimeError, match="their.hook"):
        ray_workers.merge_runtime_env(openrlhf_env, ray_workers.worker_runtime_env({"injection": {}}))
