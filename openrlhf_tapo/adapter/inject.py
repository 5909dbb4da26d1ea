"""Put our experience maker and PolicyLoss into every Ray worker OpenRLHF 0.11.2 builds them in.

OpenRLHF has no registry for either: `BasePPOTrainer.__init__` (openrlhf/trainer/ppo_trainer.py) calls its module
global `RemoteExperienceMaker(...)`, and `ActorPPOTrainer.__init__` (openrlhf/trainer/ray/ppo_actor.py) calls its
module global `PolicyLoss(...)`. Both run inside Ray actors: the `PPOTrainer` actor (sync), the `TrainingActor` that
`PPOTrainerAsync` starts from its own actor (`--train.async_enable`), and every `PolicyModelActor` rank. A patch
made in the driver never reaches those processes.

Mechanism: Ray's `worker_process_setup_hook`. `ray.init(runtime_env={"worker_process_setup_hook": SETUP_HOOK})`
makes every worker process of the job call `setup_worker()` before it runs any task or builds any actor. Chosen over
subclassing the trainer actor class because one hook covers every place the two names are used, whichever actor
tree OpenRLHF builds: subclassing would need a replacement for `PPOTrainer`, for `PPOTrainerAsync` AND for the
`TrainingActor` the latter creates in its own process, plus one for `PolicyModelActor` to reach `ActorPPOTrainer`.

`setup_worker()` imports nothing heavy: it registers an import hook so that when a worker first imports
`openrlhf.trainer.ppo_trainer` or `openrlhf.trainer.ray.ppo_actor` (unpickling the actor class does), the module is
patched right after it executes, before any of its code is called. vLLM engine workers, which never import them,
are left alone (importing the training stack there would load vLLM/DeepSpeed before Ray has set up the device).

The patches (declared, with the fingerprints of the sources they replace, in `adapter/patches.py`: a module is
patched only once they match the installed OpenRLHF, and the launcher checks them all in the driver first):
- `openrlhf.trainer.ppo_trainer.RemoteExperienceMaker` -> `TAPOExperienceMaker` (OpenRLHF's class exactly when
  `args.tapo.enable` is off).
- `ActorPPOTrainer.__init__` -> OpenRLHF's, then `self.actor_loss_fn = build_policy_loss(self.args)`: our PolicyLoss
  (gspo_token, sapo beside ppo and gspo) from the same args, with `--actor.sapo_tau_pos/neg`. OpenRLHF's own loss
  object is built first and replaced (its constructor accepts any type name; only its forward rejects ours).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import json
import os
import sys
from collections.abc import Callable

from openrlhf_tapo.adapter import patches
from openrlhf_tapo.agent.config import CONFIG_ENV as AGENT_CONFIG_ENV

SETUP_HOOK = "openrlhf_tapo.adapter.inject.setup_worker"

PATCHED: list[str] = []  # names of the modules patched in this process, in order


def _patch_ppo_trainer(module) -> None:
    from openrlhf_tapo.adapter.experience_stage import TAPOExperienceMaker

    module.RemoteExperienceMaker = TAPOExperienceMaker


def _patch_ppo_actor(module) -> None:
    from openrlhf_tapo.adapter.policy_loss import build_policy_loss

    trainer = module.ActorPPOTrainer
    openrlhf_init = trainer.__init__

    @functools.wraps(openrlhf_init)
    def __init__(self, strategy, *args, **kwargs):
        openrlhf_init(self, strategy, *args, **kwargs)
        self.actor_loss_fn = build_policy_loss(self.args)

    trainer.__init__ = __init__


PATCHES: dict[str, Callable] = {
    "openrlhf.trainer.ppo_trainer": _patch_ppo_trainer,
    "openrlhf.trainer.ray.ppo_actor": _patch_ppo_actor,
}


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then the patch; everything else (get_source for tracebacks, ...) is the real loader's."""

    def __init__(self, loader, patch: Callable, name: str):
        self._loader, self._patch, self._name = loader, patch, name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _apply(self._name, module, self._patch)

    def __getattr__(self, attr):
        return getattr(self._loader, attr)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Meta-path finder that wraps the loader of the modules in PATCHES (found by the other finders)."""

    def find_spec(self, fullname, path, target=None):
        patch = PATCHES.get(fullname)
        if patch is None or fullname in PATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, patch, fullname)
                return spec
        return None


def _apply(name: str, module, patch: Callable) -> None:
    patches.apply(name, patches.INJECTION, functools.partial(patch, module), PATCHED)


def verify() -> None:
    """Refuse (patches.OpenRLHFMismatch) unless the installed OpenRLHF is the one our patches were written for: the
    driver's check before Ray starts (each worker checks when it patches)."""
    from openrlhf_tapo.utils import cuda_stubs

    cuda_stubs.install()  # the targets' modules import vllm / flash_attn at module level
    patches.verify(patches.INJECTION)


def install() -> None:
    """Patch this process: modules already imported now, the others as soon as they are imported. Idempotent."""
    from openrlhf_tapo.utils import cuda_stubs

    # OpenRLHF's trainer modules import vllm / flash_attn at module level; stubbed only where they cannot be imported
    # (a CPU machine), never on a GPU node with the real packages.
    cuda_stubs.install()
    if not hook_installed():
        sys.meta_path.insert(0, _PatchOnImport())
    for name, patch in PATCHES.items():
        if name in sys.modules:
            _apply(name, sys.modules[name], patch)


def hook_installed() -> bool:
    """Whether `install()` ran in this process."""
    return any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path)


def setup_worker() -> None:
    """Ray `worker_process_setup_hook` (named by SETUP_HOOK): `install()` in the worker process."""
    install()


def worker_runtime_env(agent_config: str | None = None) -> dict:
    """The runtime_env additions every worker needs: our setup hook, if given the agent's YAML path, and the
    patches' override if the user set it."""
    env_vars = {AGENT_CONFIG_ENV: os.path.abspath(agent_config)} if agent_config else {}
    if os.environ.get(patches.ALLOW_UNVERIFIED_ENV):  # the user's override holds in every worker too
        env_vars[patches.ALLOW_UNVERIFIED_ENV] = os.environ[patches.ALLOW_UNVERIFIED_ENV]
    return {"worker_process_setup_hook": SETUP_HOOK, "env_vars": env_vars}


def merge_runtime_env(base: dict | None, additions: dict) -> dict:
    """`base` (OpenRLHF's runtime_env for ray.init) plus `additions`, minus what the submitted job already sets.

    Under `ray job submit`, Ray merges the job's runtime_env with the driver's and refuses any key set by both; a
    key the job already sets is left to the job (the job's value is the one the workers see either way). A job that
    names a different setup hook cannot also run ours: that is an error saying so.
    """
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR  # how `ray job submit` passes it

    job_env = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}").get("runtime_env") or {}
    merged = dict(base or {})
    env_vars = dict(merged.get("env_vars") or {})
    env_vars.update(additions.get("env_vars") or {})
    for key in job_env.get("env_vars") or {}:
        env_vars.pop(key, None)
    hook = additions.get("worker_process_setup_hook")
    job_hook = job_env.get("worker_process_setup_hook")
    if hook and job_hook and job_hook != hook:
        raise RuntimeError(
            f"the submitted job's runtime_env sets worker_process_setup_hook={job_hook!r}; the TAPO integration needs "
            f"{hook!r} in every worker. Remove it from --runtime-env-json, or have your hook call {SETUP_HOOK}()."
        )
    if hook and not job_hook:
        merged["worker_process_setup_hook"] = hook
    if env_vars:
        merged["env_vars"] = env_vars
    return merged


@contextlib.contextmanager
def ray_init_adds(additions: dict):
    """While active, `ray.init(runtime_env=...)` (as OpenRLHF's `train()` calls it) also carries `additions`.

    OpenRLHF keeps its own runtime_env (its environment defaults) and we add ours on top, without copying it.
    """
    import ray

    patches.verify(patches.declared("ray_init_adds", patches.INJECTION))
    ray_init = ray.init

    @functools.wraps(ray_init)
    def init_with_additions(*args, **kwargs):
        kwargs["runtime_env"] = merge_runtime_env(kwargs.get("runtime_env"), additions)
        return ray_init(*args, **kwargs)

    ray.init = init_with_additions
    try:
        yield
    finally:
        ray.init = ray_init


def probe_worker() -> dict:
    """What a Ray worker of the current session sees: whether our hook ran there, and the agent YAML path."""
    import ray

    @ray.remote(num_cpus=0)
    def probe():
        return {
            "hook_installed": hook_installed(),
            "agent_config": os.environ.get(AGENT_CONFIG_ENV),
            "pid": os.getpid(),
        }

    return ray.get(probe.remote())


def require_injection_in_session(agent_config: str | None) -> None:
    """For a Ray session someone else initialised: fail unless its workers run our hook with the right agent YAML."""
    seen = probe_worker()
    expected = os.path.abspath(agent_config) if agent_config else None
    if not seen["hook_installed"]:
        raise RuntimeError(
            "Ray was initialised before the TAPO launcher without its worker setup hook, so OpenRLHF's actors would "
            f"run without our experience maker and loss. Initialise Ray with runtime_env={worker_runtime_env()!r} "
            f"(or chain {SETUP_HOOK} from your own hook), or let the launcher initialise Ray."
        )
    if expected and seen["agent_config"] != expected:
        raise RuntimeError(
            f"Ray workers see {AGENT_CONFIG_ENV}={seen['agent_config']!r}, not the --agent.config {expected!r}; "
            "add it to the env_vars of the runtime_env you initialise Ray with."
        )
