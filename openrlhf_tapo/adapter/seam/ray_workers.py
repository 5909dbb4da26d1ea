"""Where our code meets Ray in the driver: the ONE `ray.init` wrapper, which puts the ONE worker setup hook in.

OpenRLHF's actors (the PPO trainer, the async `TrainingActor`, every model rank, the vLLM rollout actors) live in Ray
worker processes, where no patch made in the driver reaches. Ray's `worker_process_setup_hook` makes every worker
process of the job call our hook (`SETUP_HOOK`: adapter/seam/worker_hook.py) before it runs any task or builds any
actor; Ray takes one hook per job. The hook applies the declared patches (adapter/seam/patches.py) of the patch sets
the job asked for, in one fixed order, named by $OPENRLHF_TAPO_PATCH_SETS in the job's runtime_env:

    cpu_profile   seam/cpu_profile.py: OpenRLHF on a CPU-only machine (asked for by `apply_cpu_profile()`)
    injection     seam/inject.py: our experience maker and PolicyLoss (asked for by the launcher, cli/train_ppo_ray)

A driver asks for a set with `request(set, env_vars, init_kwargs)` (or the `requested(...)` context). While any set
is requested, `ray.init` in the driver (OpenRLHF's `train()` calls it with its own runtime_env) also carries our hook,
the sets, their env_vars and, for a node this process starts, their `init_kwargs` (the CPU profile's fake GPUs);
explicit arguments of the caller win. The wrapper is itself declared in patches.py (`RAY`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os

from openrlhf_tapo.adapter.seam import patches

SETUP_HOOK = "openrlhf_tapo.adapter.seam.worker_hook.setup_worker"  # the hook (worker_hook.py)
PATCH_SETS_ENV = "OPENRLHF_TAPO_PATCH_SETS"
PATCH_SETS = ("cpu_profile", "injection")  # applied in this order in every worker

_REQUESTED: dict[str, tuple[dict, dict]] = {}  # patch set -> (env_vars for the workers, ray.init kwargs defaults)
_ORIGINAL_INIT = []  # ray.init as it was before our wrapper, while the wrapper is installed


def worker_runtime_env(requested: dict[str, dict] | None = None) -> dict:
    """The runtime_env every worker needs: our hook, the patch sets and their env_vars (`requested`: set -> env_vars;
    default: what this process requested), and the patches' override if the user set it."""
    if requested is None:
        requested = {name: env_vars for name, (env_vars, _) in _REQUESTED.items()}
    sets = [name for name in PATCH_SETS if name in requested]
    env_vars = {PATCH_SETS_ENV: ",".join(sets)}
    for name in sets:
        env_vars.update(requested[name])
    if os.environ.get(patches.ALLOW_UNVERIFIED_ENV):  # the user's override holds in every worker too
        env_vars[patches.ALLOW_UNVERIFIED_ENV] = os.environ[patches.ALLOW_UNVERIFIED_ENV]
    return {"worker_process_setup_hook": SETUP_HOOK, "env_vars": env_vars}


def merge_runtime_env(base: dict | None, additions: dict) -> dict:
    """`base` (the caller's runtime_env for ray.init) plus `additions`, minus what the submitted job already sets.

    Under `ray job submit`, Ray merges the job's runtime_env with the driver's and refuses any key set by both; a
    key the job already sets is left to the job (the job's value is the one the workers see either way). A caller or
    a job that names a different setup hook cannot also run ours: that is an error saying so.
    """
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR  # how `ray job submit` passes it

    job_env = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}").get("runtime_env") or {}
    merged = dict(base or {})
    env_vars = dict(merged.get("env_vars") or {})
    env_vars.update(additions.get("env_vars") or {})
    for key in job_env.get("env_vars") or {}:
        env_vars.pop(key, None)
    hook = additions["worker_process_setup_hook"]
    for origin, other in (("runtime_env given to ray.init", merged), ("submitted job's runtime_env", job_env)):
        theirs = other.get("worker_process_setup_hook")
        if theirs and theirs != hook:
            raise RuntimeError(
                f"the {origin} sets worker_process_setup_hook={theirs!r}; openrlhf_tapo needs {hook!r} in every "
                f"worker (Ray takes one hook). Remove yours, or have it call {SETUP_HOOK}()."
            )
    if not job_env.get("worker_process_setup_hook"):
        merged["worker_process_setup_hook"] = hook
    else:
        merged.pop("worker_process_setup_hook", None)
    if env_vars:
        merged["env_vars"] = env_vars
    return merged


def _connects_to_a_cluster(args, kwargs) -> bool:
    return bool((args[0] if args else kwargs.get("address")) or os.environ.get("RAY_ADDRESS"))


def init_kwargs(args: tuple, kwargs: dict) -> dict:
    """The keyword arguments our wrapper passes to Ray's `ray.init(*args, **kwargs)` while sets are requested."""
    kwargs = dict(kwargs)
    kwargs["runtime_env"] = merge_runtime_env(kwargs.get("runtime_env"), worker_runtime_env())
    if not _connects_to_a_cluster(args, kwargs):  # Ray refuses resources when joining a running cluster
        for _, defaults in _REQUESTED.values():
            for key, value in defaults.items():
                kwargs.setdefault(key, value)
    return kwargs


def _install_wrapper() -> None:
    import ray

    ray_init = ray.init

    @functools.wraps(ray_init)
    def init_with_our_workers(*args, **kwargs):
        return ray_init(*args, **init_kwargs(args, kwargs))

    _ORIGINAL_INIT.append(ray_init)
    ray.init = init_with_our_workers


def request(patch_set: str, env_vars: dict | None = None, init_kwargs_defaults: dict | None = None) -> None:
    """Ask for `patch_set` in every worker of the Ray session this process starts, with `env_vars` for the workers
    and `init_kwargs_defaults` for a node this process starts. Installs the `ray.init` wrapper (once, verified)."""
    if patch_set not in PATCH_SETS:
        raise ValueError(f"unknown patch set {patch_set!r}; known: {', '.join(PATCH_SETS)}")
    if not _ORIGINAL_INIT:
        patches.verify(patches.declared("ray_init", patches.RAY))
        _install_wrapper()
    _REQUESTED[patch_set] = (dict(env_vars or {}), dict(init_kwargs_defaults or {}))


def withdraw(patch_set: str) -> None:
    """Undo `request(patch_set)`; with no set left, `ray.init` is Ray's own again."""
    _REQUESTED.pop(patch_set, None)
    if not _REQUESTED and _ORIGINAL_INIT:
        import ray

        ray.init = _ORIGINAL_INIT.pop()


@contextlib.contextmanager
def requested(patch_set: str, env_vars: dict | None = None):
    """`request(patch_set, env_vars)` while the block runs (the launcher's form, around OpenRLHF's `train()`)."""
    request(patch_set, env_vars)
    try:
        yield
    finally:
        withdraw(patch_set)


def probe_worker() -> dict:
    """What a Ray worker of the current session sees: whether the injection's import hook is in, and its env."""
    import ray

    @ray.remote(num_cpus=0)
    def probe():
        from openrlhf_tapo.adapter.seam import inject

        return {"hook_installed": inject.hook_installed(), "env": dict(os.environ), "pid": os.getpid()}

    return ray.get(probe.remote())


def require_in_session(patch_set: str, env_vars: dict) -> None:
    """For a Ray session someone else initialised: fail unless its workers run our hook with `patch_set` and see
    `env_vars`."""
    seen = probe_worker()
    if patch_set == "injection" and not seen["hook_installed"]:
        raise RuntimeError(
            "Ray was initialised before the TAPO launcher without our worker setup hook, so OpenRLHF's actors would "
            f"run without our experience maker and loss. Initialise Ray with "
            f"runtime_env={worker_runtime_env({patch_set: env_vars})!r} (or call {SETUP_HOOK} from your own hook), "
            "or let the launcher initialise Ray."
        )
    for key, value in env_vars.items():
        if seen["env"].get(key) != value:
            raise RuntimeError(
                f"Ray workers see {key}={seen['env'].get(key)!r}, not {value!r}; add it to the env_vars of the "
                "runtime_env you initialise Ray with."
            )
