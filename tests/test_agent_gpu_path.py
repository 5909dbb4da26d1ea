"""What the rollout executor hands a GPU cluster: multimodal tensors in the trainer's dtype and their byte count, a
bounded decoder cache, and failures that cost one trajectory (docs/integration.md, "GPU-path risks")."""

import pickle

import pytest
import torch
from _agent_helpers import ScriptedEngine, make_index, picture, tiny_vlm_dir
from vllm import SamplingParams

from openrlhf_tapo.agent.config import MM_DTYPE_ENV, AgentConfig, load_agent_config
from openrlhf_tapo.agent.rollout import AgentExecutor, mm_payload_bytes
from openrlhf_tapo.task.tiny_model import load_processor
from openrlhf_tapo.tools.registry import build_tool_runner

MAX_LEN = 4096
ZOOM = '<tool_call>{"name": "zoom", "arguments": {"image": "img_0", "bbox": [0, 0, 500, 500]}}</tool_call>'


@pytest.fixture(scope="module")
def processor():
    return load_processor(tiny_vlm_dir())


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpu_path_index") / "index"
    make_index(directory)
    return directory


def agent(index_dir, **overrides) -> AgentExecutor:
    tools = overrides.pop("tools", {})
    config = AgentConfig.from_dict({"tools": {"backend": {"index_dir": str(index_dir)}, **tools}, **overrides})
    return AgentExecutor(config, runner=build_tool_runner(config.tools))


def params(**kw):
    return SamplingParams(**{"max_tokens": 1024, "temperature": 1.0, "logprobs": None, **kw})


async def _zoom_trajectory(executor, processor) -> dict:
    engine = ScriptedEngine(processor, [ZOOM, "<answer>Paris</answer>"])
    return await executor.execute("Where?", "paris", params(), MAX_LEN, processor, engine, [picture(7)])


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
async def test_pixel_values_come_back_in_the_trainer_dtype_and_are_counted(processor, index_dir, dtype):
    reference = await _zoom_trajectory(agent(index_dir), processor)  # no dtype set: the processor's float32
    out = await _zoom_trajectory(agent(index_dir, mm_dtype=dtype), processor)
    mm, ref = out["mm_train_inputs"], reference["mm_train_inputs"]
    assert ref["pixel_values"].dtype == torch.float32
    assert mm["pixel_values"].dtype == getattr(torch, dtype)
    assert mm["image_grid_thw"].dtype == ref["image_grid_thw"].dtype  # integer tensors keep their dtype
    # Lossless for a vision tower computing in `dtype`: it casts its input to its own dtype first.
    assert torch.equal(mm["pixel_values"], ref["pixel_values"].to(getattr(torch, dtype)))
    # Two images (question + crop); bytes = values x element size, logged per trajectory.
    values = ref["pixel_values"].numel()
    grid_bytes = ref["image_grid_thw"].numel() * ref["image_grid_thw"].element_size()
    per_value = 2 if dtype == "bfloat16" else 4
    assert ref["image_grid_thw"].shape[0] == 2
    assert mm_payload_bytes(mm) == values * per_value + grid_bytes
    assert out["extra_logs"]["mm_bytes"] == values * per_value + grid_bytes
    assert reference["extra_logs"]["mm_bytes"] == values * 4 + grid_bytes


def test_mm_dtype_comes_from_the_launcher_environment_unless_the_yaml_sets_it(tmp_path, monkeypatch):
    monkeypatch.delenv(MM_DTYPE_ENV, raising=False)
    assert load_agent_config().mm_dtype is None
    monkeypatch.setenv(MM_DTYPE_ENV, "bfloat16")
    assert load_agent_config().mm_dtype == "bfloat16"
    config = tmp_path / "agent.yaml"
    config.write_text("mm_dtype: float32\n")
    assert load_agent_config(config).mm_dtype == "float32"
    monkeypatch.setenv(MM_DTYPE_ENV, "bf16")
    with pytest.raises(ValueError, match=r"OPENRLHF_TAPO_MM_DTYPE.*agent.mm_dtype must be one of"):
        load_agent_config()


async def test_decoder_cache_is_bounded_across_unpickled_tokenizers(processor, index_dir):
    """OpenRLHF sends a freshly unpickled processor with every prompt: the cache must not keep each one."""
    executor = agent(index_dir)
    outs = []
    for _ in range(20):
        copy = pickle.loads(pickle.dumps(processor))
        engine = ScriptedEngine(copy, ["<answer>Paris</answer>"])
        outs.append(await executor.execute("Where?", "paris", params(), MAX_LEN, copy, engine, [picture(1)]))
    assert len(executor._decoders) == 1
    (decoder,) = executor._decoders.values()
    tokens = outs[-1]["observation_tokens"]
    assert decoder.decode(tokens) == processor.tokenizer.decode(tokens, skip_special_tokens=False)
    assert all(o["reward"] == outs[0]["reward"] > 0 for o in outs)
