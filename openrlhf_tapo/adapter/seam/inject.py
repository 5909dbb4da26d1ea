"""Put our experience maker and PolicyLoss into every Ray worker OpenRLHF 0.11.2 builds them in.

OpenRLHF has no registry for either: `BasePPOTrainer.__init__` (openrlhf/trainer/ppo_trainer.py) calls its module
global `RemoteExperienceMaker(...)`, and `ActorPPOTrainer.__init__` (openrlhf/trainer/ray/ppo_actor.py) calls its
module global `PolicyLoss(...)`. Both run inside Ray actors: the `PPOTrainer` actor (sync), the `TrainingActor` that
`PPOTrainerAsync` starts from its own actor (`--train.async_enable`), and every `PolicyModelActor` rank. A patch
made in the driver never reaches those processes.

Mechanism: Ray's `worker_process_setup_hook` (adapter/seam/ray_workers.py: the one hook, which calls `install()` here
when the job asks for the "injection" patch set) runs in every worker process of the job before it runs any task or
builds any actor. Chosen over subclassing the trainer actor class because one hook covers every place the two names
are used, whichever actor tree OpenRLHF builds: subclassing would need a replacement for `PPOTrainer`, for
`PPOTrainerAsync` AND for the `TrainingActor` the latter creates in its own process, plus one for `PolicyModelActor`
to reach `ActorPPOTrainer`.

`install()` imports nothing heavy: it registers an import hook so that when a worker first imports
`openrlhf.trainer.ppo_trainer` or `openrlhf.trainer.ray.ppo_actor` (unpickling the actor class does), the module is
patched right after it executes, before any of its code is called. vLLM engine workers, which never import them,
are left alone (importing the training stack there would load vLLM/DeepSpeed before Ray has set up the device).

The patches (declared, with the fingerprints of the sources they replace, in `adapter/seam/patches.py`: a module is
patched only once they match the installed OpenRLHF, and the launcher checks them all in the driver first):
- `openrlhf.trainer.ppo_trainer.RemoteExperienceMaker` -> `TAPOExperienceMaker` (OpenRLHF's class exactly when
  `args.tapo.enable` is off).
- `ActorPPOTrainer.__init__` -> OpenRLHF's, then `self.actor_loss_fn = build_policy_loss(self.args)`: our PolicyLoss
  (gspo_token, sapo beside ppo and gspo) from the same args, with `--actor.sapo_tau_pos/neg`. OpenRLHF's own loss
  object is built first and replaced (its constructor accepts any type name; only its forward rejects ours).
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import os
import socket
import sys
from collections.abc import Callable

from openrlhf_tapo.adapter.seam import patches
from openrlhf_tapo.agent.config import CONFIG_ENV as AGENT_CONFIG_ENV
from openrlhf_tapo.agent.config import MM_DTYPE_ENV

PATCHED: list[str] = []  # names of the modules patched in this process, in order
# Set by the launcher when its own node imports the real vLLM: a worker of that job must too. Without it, the CPU
# import stub would stand in for vLLM's SamplingParams in the PPO trainer (a GPU-less actor that may land on a node
# without vLLM) and fail far from the cause, inside vLLM's engine on another node.
REQUIRE_VLLM_ENV = "OPENRLHF_TAPO_REQUIRE_VLLM"


def _patch_ppo_trainer(module) -> None:
    from openrlhf_tapo.adapter.stage.experience_stage import TAPOExperienceMaker

    module.RemoteExperienceMaker = TAPOExperienceMaker


def _patch_ppo_actor(module) -> None:
    from openrlhf_tapo.adapter.stage.openrlhf_loss import build_policy_loss

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

    if os.environ.get(REQUIRE_VLLM_ENV) == "1" and not cuda_stubs.real_module_available("vllm"):
        raise RuntimeError(
            f"vllm is not importable on this node ({socket.gethostname()}, {sys.executable}), but the launcher's node "
            "has it: OpenRLHF's trainer would run with a stand-in for vLLM here. Install the same vLLM "
            "(openrlhf[vllm], the README's GPU install) in this environment on every node of the Ray cluster."
        )
    # OpenRLHF's trainer modules import vllm / flash_attn at module level; stubbed only where they cannot be imported
    # (a CPU machine that runs everything without vLLM, as the tests do), never where the real packages import.
    cuda_stubs.install()
    if not hook_installed():
        sys.meta_path.insert(0, _PatchOnImport())
    for name, patch in PATCHES.items():
        if name in sys.modules:
            _apply(name, sys.modules[name], patch)


def hook_installed() -> bool:
    """Whether `install()` ran in this process."""
    return any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path)


def trainer_compute_dtype(args) -> str:
    """The torch dtype name OpenRLHF's actor computes in for `args`: its own `--ds.param_dtype` conversion, so the
    CPU profile's float32 (which replaces that conversion) is seen too."""
    from openrlhf.utils.utils import convert_to_torch_dtype

    return str(convert_to_torch_dtype(args.ds.param_dtype)).removeprefix("torch.")


def worker_env_vars(agent_config: str | None, mm_dtype: str | None = None, require_vllm: bool = False) -> dict:
    """What the injection's workers need in their environment: the agent's YAML path, if given; the dtype its
    multimodal training tensors are returned in (`trainer_compute_dtype`), if given; whether vLLM must import for
    real (the launcher's node has it)."""
    env = {AGENT_CONFIG_ENV: os.path.abspath(agent_config)} if agent_config else {}
    if mm_dtype:
        env[MM_DTYPE_ENV] = mm_dtype
    if require_vllm:
        env[REQUIRE_VLLM_ENV] = "1"
    return env


def launcher_env_vars(args) -> dict[str, str]:
    """`worker_env_vars` for the launcher's parsed args, on the launcher's node."""
    from openrlhf_tapo.utils import cuda_stubs

    return worker_env_vars(args.agent.config, trainer_compute_dtype(args), cuda_stubs.real_module_available("vllm"))
