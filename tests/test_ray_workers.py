"""The one worker setup hook (adapter/seam/worker_hook.py) and the one `ray.init` wrapper (seam/ray_workers.py),
without a cluster: what the hook applies in a worker, and what `ray.init` receives while patch sets are requested."""

import importlib

import pytest

from openrlhf_tapo.adapter.seam import cpu_profile, inject, ray_workers, worker_hook

ray = pytest.importorskip("ray")


def test_the_hook_ray_is_told_to_call_is_the_hook():
    module, _, name = ray_workers.SETUP_HOOK.rpartition(".")
    assert getattr(importlib.import_module(module), name) is worker_hook.setup_worker


@pytest.fixture
def applied(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_profile, "apply_cpu_profile", lambda: calls.append("cpu_profile"))
    monkeypatch.setattr(inject, "install", lambda: calls.append("injection"))
    return calls


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ("injection,cpu_profile", ["cpu_profile", "injection"]),  # the profile first, whatever the order asked
        ("cpu_profile", ["cpu_profile"]),  # OpenRLHF's own launcher under the CPU profile: no TAPO injection
        (None, ["injection"]),  # a session a user initialised with only our hook named
    ],
)
def test_the_hook_applies_the_requested_sets_in_order(monkeypatch, applied, sets, expected):
    if sets is None:
        monkeypatch.delenv(ray_workers.PATCH_SETS_ENV, raising=False)
    else:
        monkeypatch.setenv(ray_workers.PATCH_SETS_ENV, sets)
    worker_hook.setup_worker()
    assert applied == expected


def test_the_hook_refuses_an_unknown_set(monkeypatch, applied):
    monkeypatch.setenv(ray_workers.PATCH_SETS_ENV, "injection,cuda_profile")
    with pytest.raises(ValueError, match="unknown patch set.*cuda_profile"):
        worker_hook.setup_worker()
    assert applied == []


@pytest.fixture
def recorded_init(monkeypatch):
    calls = []
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield calls
    for name in ray_workers.PATCH_SETS:
        ray_workers.withdraw(name)


def test_one_wrapper_carries_every_requested_set(recorded_init):
    original = ray.init
    ray_workers.request("cpu_profile", {"DS_ACCELERATOR": "cpu"}, {"num_gpus": 4, "num_cpus": 8})
    with ray_workers.requested("injection", {"OPENRLHF_TAPO_AGENT_CONFIG": "/a.yaml"}):
        ray.init(num_cpus=2, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "true"}})
        ray.init(address="auto")
    (_, started), (_, joined) = recorded_init
    assert started["num_cpus"] == 2 and started["num_gpus"] == 4  # the caller's explicit value wins
    assert started["runtime_env"] == {
        "worker_process_setup_hook": ray_workers.SETUP_HOOK,
        "env_vars": {
            "TOKENIZERS_PARALLELISM": "true",
            ray_workers.PATCH_SETS_ENV: "cpu_profile,injection",
            "DS_ACCELERATOR": "cpu",
            "OPENRLHF_TAPO_AGENT_CONFIG": "/a.yaml",
        },
    }
    assert "num_gpus" not in joined  # joining a running cluster: Ray refuses resources there
    ray.init()  # the launcher's set withdrawn: the profile's stays
    assert recorded_init[-1][1]["runtime_env"]["env_vars"][ray_workers.PATCH_SETS_ENV] == "cpu_profile"
    assert ray.init is not original
    ray_workers.withdraw("cpu_profile")
    assert ray.init is original  # nothing requested: Ray's own ray.init again


def test_a_callers_other_hook_is_refused_not_replaced(recorded_init):
    with ray_workers.requested("injection"):
        with pytest.raises(RuntimeError, match="their.hook.*Ray takes one hook"):
            ray.init(runtime_env={"worker_process_setup_hook": "their.hook"})
    assert recorded_init == []
