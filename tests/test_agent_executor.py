"""The rollout executor against OpenRLHF's real agent API: exact token bookkeeping, images, errors, a real model."""

import asyncio
import json

import numpy as np
import pytest
import torch
from _agent_helpers import ScriptedEngine, make_index, picture, tiny_vlm_dir
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.utils.agent import AgentExecutorBase
from openrlhf.utils.vlm_utils import dedup_media_tokens, process_prompt_with_images
from PIL import Image
from vllm import SamplingParams

from openrlhf_tapo.adapter.stage.trajectory import ToolCallRecovery
from openrlhf_tapo.agent import protocol
from openrlhf_tapo.agent.config import AgentConfig
from openrlhf_tapo.agent.rollout import ERROR_KINDS, AgentExecutor
from openrlhf_tapo.search.base import SearchBackend, SearchError, SearchTimeout
from openrlhf_tapo.task.tiny_model import FAMILIES, load_processor
from openrlhf_tapo.tools.base import ToolContext, bbox_to_pixels
from openrlhf_tapo.tools.registry import build_tool_runner

MAX_LEN = 4096
SEARCH = '<tool_call>{"name": "text_search", "arguments": {"query": "Eiffel Tower"}}</tool_call>'
ZOOM = '<tool_call>{"name": "zoom", "arguments": {"image": "img_0", "bbox": [0, 0, 500, 500]}}</tool_call>'


@pytest.fixture(scope="module", autouse=True)
def records_from_tokens_equal_records_from_rollout():
    """Every trajectory any test of this file makes: the tool calls the TAPO stage rebuilds from OpenRLHF's tensors
    (with the run's tools config) equal the records the rollout built while it ran them. Module-scoped so that the
    hypothesis test is checked too; yields how many trajectories were checked and how many calls they held."""
    execute = AgentExecutor.execute
    checked = {"trajectories": 0, "calls": 0}

    async def checked_execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine, images=None):
        out = await execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine, images)
        exp = SamplesGenerator._process_response_into_experience(None, out, max_len=max_length)
        recovery = ToolCallRecovery(hf_tokenizer, self.config.tools)
        recovered = recovery.recover(exp.sequences, exp.action_mask, exp.attention_mask)
        assert recovered.calls == out["tool_calls"]
        checked["trajectories"] += 1
        checked["calls"] += len(out["tool_calls"])
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AgentExecutor, "execute", checked_execute)
        yield checked
    assert checked["trajectories"] > 0 and checked["calls"] > 0


@pytest.fixture(scope="module")
def processor():
    return load_processor(tiny_vlm_dir())


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("agent_index") / "index"
    make_index(directory)
    return directory


def agent(index_dir, backend=None, **overrides) -> AgentExecutor:
    tools = overrides.pop("tools", {})
    config = AgentConfig.from_dict({"tools": {"backend": {"index_dir": str(index_dir)}, **tools}, **overrides})
    runner = build_tool_runner(config.tools, backend=backend)
    return AgentExecutor(config, runner=runner)


def params(**kw):
    return SamplingParams(**{"max_tokens": 1024, "temperature": 1.0, "logprobs": None, **kw})


def decode(processor, tokens):
    return processor.tokenizer.decode(tokens, skip_special_tokens=False)


def collapsed(processor, tokens):
    """The transcript with each run of image pads shown as the single placeholder the text was written with."""
    return decode(processor, dedup_media_tokens(tokens, {processor.image_token_id}))


async def test_multi_turn_tokens_masks_and_images_are_exact(processor, index_dir):
    executor = agent(index_dir)
    assert isinstance(executor, AgentExecutorBase)
    turns = ["I will search. " + SEARCH, ZOOM, "<answer>Paris</answer>"]
    engine = ScriptedEngine(processor, turns)
    question_image = picture(7)
    label = json.dumps({"ground_truth": "paris", "candidate_answers": []})
    out = await executor.execute(
        "Where is this?", label, params(logprobs=0), MAX_LEN, processor, engine, [question_image]
    )
    tokens, ranges = out["observation_tokens"], out["action_ranges"]

    # The transcript is exactly: prompt, then per turn the action and the tool response the protocol writes.
    runner = executor.runner
    search = await runner.call("text_search", {"query": "Eiffel Tower"}, ToolContext())
    zoom_ctx = ToolContext(images={"img_0": question_image})
    zoom = await runner.call("zoom", {"image": "img_0", "bbox": [0, 0, 500, 500]}, zoom_ctx)
    prompt = protocol.build_prompt("Where is this?", 1, runner.schemas())
    response1, _ = protocol.format_tool_response(search.text)
    response2, order = protocol.format_tool_response(zoom.text, ["img_1"])
    assert order == ["img_1"] and "[img_1] <|vision_start|>" in response2
    assert collapsed(processor, tokens) == prompt + turns[0] + response1 + turns[1] + response2 + turns[2]

    # Action ranges hold exactly the generated tokens; everything else is prompt or environment.
    prompt_tokens, _, _ = process_prompt_with_images(processor, prompt, [question_image])
    assert ranges[0][0] == len(prompt_tokens) and tokens[: len(prompt_tokens)] == prompt_tokens
    for (start, end), text in zip(ranges, turns, strict=True):
        assert tokens[start:end] == processor.tokenizer.encode(text, add_special_tokens=False)
    assert ranges[-1][1] == len(tokens)
    for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert decode(processor, tokens[end:start]).startswith("<|im_end|>\n<|im_start|>user\n<tool_response>")

    # OpenRLHF's own conversion: action_mask[j] covers token j+1; only generated tokens are trained on.
    experience = SamplesGenerator._process_response_into_experience(None, out, max_len=MAX_LEN)
    expected = torch.zeros(len(tokens), dtype=torch.long)
    for start, end in ranges:
        expected[start:end] = 1
    assert torch.equal(experience.action_mask[0], expected[1:])
    assert experience.info["calls/zoom"].item() == 1 and experience.rewards.item() == pytest.approx(0.91)

    # Images: the question image and the zoom crop, in order, to vLLM and to training.
    crop = question_image.crop(bbox_to_pixels([0, 0, 500, 500], question_image.size))
    sent = engine.requests[2]["images"]
    assert len(sent) == 2 and np.array_equal(np.asarray(sent[1]), np.asarray(crop))
    assert [len(r["images"]) for r in engine.requests] == [1, 1, 2]
    reference = processor(text=[collapsed(processor, tokens)], images=[question_image, crop], add_special_tokens=False)
    mm = out["mm_train_inputs"]
    assert torch.equal(mm["image_grid_thw"], torch.as_tensor(reference["image_grid_thw"]))
    assert torch.allclose(mm["pixel_values"], torch.as_tensor(reference["pixel_values"]))
    assert list(reference["input_ids"][0]) == tokens  # the processor expands the placeholders like the executor

    # Per-turn sampling: our stops, stop strings kept, max_tokens = min(per-turn limit, room left).
    for request in engine.requests:
        assert request["stop"] == list(protocol.STOP_STRINGS) and request["include_stop"]
        assert request["max_tokens"] == min(1024, MAX_LEN - len(request["tokens"]))
    # Rollout log-probs: the engine's values on actions, 0 on prompt and environment tokens.
    assert np.array_equal(np.array(out["rollout_log_probs"]), np.where(expected.numpy() == 1, -0.5, 0.0))

    logs = out["extra_logs"]
    assert list(logs) == executor.log_keys()
    assert {k: v for k, v in logs.items() if v} == {
        "turns": 3.0,
        "tool_calls": 2.0,
        "answered": 1.0,
        "format_ok": 1.0,
        "exact_match": 1.0,
        "substring_match": 1.0,
        "f1": 1.0,
        "images_added": 1.0,
        "calls/text_search": 1.0,
        "calls/zoom": 1.0,
        "mm_bytes": float(mm["pixel_values"].nbytes + mm["image_grid_thw"].nbytes),
    }
    assert (out["reward"], out["scores"], out["truncated"]) == (pytest.approx(0.91), 1.0, False)


class FlakyBackend(SearchBackend):
    """Fails text searches with the scripted errors. Image searches wait until `barrier` of them are in flight
    at once (or fail after 20 s): they can only all succeed if the trajectories really run concurrently."""

    name = "flaky"

    def __init__(self, errors=(), barrier=1):
        self.errors = list(errors)
        self.barrier = barrier
        self.in_flight = 0
        self.all_in = asyncio.Event()

    async def text_search(self, query, top_k):
        raise self.errors.pop(0)

    async def image_search(self, image, top_k, *, image_url=None):
        self.in_flight += 1
        if self.in_flight >= self.barrier:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 20)
        return []


async def test_bad_calls_become_error_observations_and_are_counted(processor, index_dir):
    backend = FlakyBackend([SearchError("upstream said 502", "backend"), SearchTimeout("no reply in 20 s")])
    executor = agent(index_dir, backend=backend, max_turns=9)
    turns = [
        '<tool_call>{"name": "zoom", "arguments": {"image": "img_0", "bbox": [0, 0, 5</tool_call>',  # bad JSON
        '<tool_call>{"name": "web_browse", "arguments": {"url": "x"}}</tool_call>',  # unknown tool
        '<tool_call>{"name": "zoom", "arguments": {"image": "img_0", "bbox": [0, 0, 1200, 50]}}</tool_call>',
        '<tool_call>{"name": "zoom", "arguments": {"image": "img_9", "bbox": [0, 0, 10, 10]}}</tool_call>',
        '<tool_call>{"name": "zoom", "arguments": {"image": "img_0"}}</tool_call>',  # missing argument
        '<tool_call>{"name": "text_search", "arguments": {"query": "q"}}</tool_call>',  # backend failure
        '<tool_call>{"name": "text_search", "arguments": {"query": "q"}}</tool_call>',  # backend timeout
        "<answer>Paris</answer>",
    ]
    engine = ScriptedEngine(processor, turns)
    out = await executor.execute("Q?", "Paris", params(), MAX_LEN, processor, engine, [picture(1)])
    logs = out["extra_logs"]
    counted = {k: v for k, v in logs.items() if k.startswith("errors/") and v}
    assert counted == {
        "errors/bad_json": 1.0,
        "errors/unknown_tool": 1.0,
        "errors/bad_arguments": 2.0,
        "errors/image_ref": 1.0,
        "errors/backend": 1.0,
        "errors/timeout": 1.0,
    }
    assert logs["errors"] == 7 and logs["turns"] == 8 and logs["answered"] == 1 and logs["format_ok"] == 0
    # The model read each failure: one error observation per failed call, naming the problem.
    text = collapsed(processor, out["observation_tokens"])
    responses = text.split("<tool_response>\n")[1:]
    assert len(responses) == 7 and all(r.startswith("Error") for r in responses)
    assert "JSON object" in responses[0] and "web_browse" in responses[1] and "img_9" in responses[3]
    assert "502" in responses[5]
    # searched (text_search was called) + correct, format broken: 0.9 * 1 * 0.9 + 0
    assert out["reward"] == pytest.approx(0.81)


async def test_custom_tools_raised_limits_and_failed_calls_are_recorded_as_tapo_reads_them(processor, index_dir):
    tools = {
        "enabled": ["text_search", "_agent_helpers:LookupTool"],
        "max_calls_per_tool": 1,
        "text_search": {"max_query_chars": 2000},
    }
    executor = agent(index_dir, tools=tools)
    long_query = "Eiffel Tower height " * 40  # 800 characters: over the default limit of 512, under this run's
    lookup = '<tool_call>{{"name": "lookup", "arguments": {{"key": "{}"}}}}</tool_call>'
    search = json.dumps({"name": "text_search", "arguments": {"query": long_query}})
    turns = [lookup.format(" Paris "), f"<tool_call>{search}</tool_call>", lookup.format("Rome"), "<answer>x</answer>"]
    engine = ScriptedEngine(processor, turns)
    out = await executor.execute("Q?", "x", params(), MAX_LEN, processor, engine, [picture(4)])

    records = out["tool_calls"]
    assert [(r.traj, r.turn, r.tool, dict(r.params), r.succeeded) for r in records] == [
        (0, 0, "lookup", {"key": "paris"}, True),
        (0, 1, "text_search", {"query": long_query.strip()}, True),
        (0, 2, "lookup", {"key": "rome"}, False),  # the second lookup hit max_calls_per_tool
    ]
    assert records[0].observation == "paris = 42" and records[1].observation.startswith("1. Eiffel Tower")
    assert records[2].observation.startswith("Error: ") and out["extra_logs"]["errors/call_limit"] == 1
    # Spans in OpenRLHF's columns: action_mask[j] is token j + 1, so turn k's columns are its action range - 1.
    for record, (start, end) in zip(records, out["action_ranges"], strict=False):
        assert record.turn_span == (start - 1, end - 1) and record.call_span == record.turn_span
    # With the tools' defaults (no custom tool, 512 characters) the TAPO stage would have lost all three calls.
    exp = SamplesGenerator._process_response_into_experience(None, out, max_len=MAX_LEN)
    defaults = ToolCallRecovery(processor).recover(exp.sequences, exp.action_mask, exp.attention_mask)
    assert defaults.calls == [] and defaults.invalid_calls == [3]


async def test_undecodable_question_image_and_bad_label_do_not_raise(processor, index_dir):
    executor = agent(index_dir)
    engine = ScriptedEngine(processor, ["<answer>x</answer>"])
    good = picture(2)
    out = await executor.execute(
        "Q?", {"candidate_answers": ["x"]}, params(), MAX_LEN, processor, engine, [b"\x89PNG broken", good]
    )
    text = collapsed(processor, out["observation_tokens"])
    assert "[img_0] <|vision_start|>" in text and "[img_1]" not in text
    assert "(1 question image(s) could not be loaded)" in text
    assert out["mm_train_inputs"]["image_grid_thw"].shape[0] == 1 and len(engine.requests[0]["images"]) == 1
    logs = out["extra_logs"]
    assert logs["errors/question_image"] == 1 and logs["errors/label"] == 1 and out["reward"] == pytest.approx(0.1)


async def test_limits_turns_tokens_and_context(processor, index_dir):
    # Turn limit: a call in the last allowed turn is not run.
    executor = agent(index_dir, max_turns=2)
    engine = ScriptedEngine(processor, [ZOOM, ZOOM])
    out = await executor.execute("Q?", "a", params(), MAX_LEN, processor, engine, [picture(3)])
    text = collapsed(processor, out["observation_tokens"])
    assert executor.config.last_turn_notice in text and text.count("<tool_response>\n") == 1
    # Every turn bans the vision special tokens (a placeholder the policy wrote would have no image behind it).
    assert all(set(protocol.VISION_SPECIAL_TOKENS) <= set(r["bad_words"]) for r in engine.requests)
    assert out["extra_logs"]["errors/turn_limit"] == 1 and out["extra_logs"]["calls/zoom"] == 1
    assert (out["truncated"], out["reward"]) == (False, 0.0)

    # Per-turn token limit: the turn is cut, the trajectory ends truncated.
    executor = agent(index_dir, max_tokens_per_turn=5)
    engine = ScriptedEngine(processor, ["a long reasoning that never ends " * 3])
    out = await executor.execute("Q?", "a", params(), MAX_LEN, processor, engine, None)
    ((start, end),) = out["action_ranges"]
    assert end - start == 5 and out["truncated"] and out["extra_logs"]["truncated_turn"] == 1

    # Context: a tool response that does not fit max_length ends the trajectory without overflowing it.
    executor = agent(index_dir)
    prompt_len = len(
        process_prompt_with_images(processor, protocol.build_prompt("Q?", 1, executor.runner.schemas()), [picture(3)])[
            0
        ]
    )
    engine = ScriptedEngine(processor, [SEARCH])
    max_len = prompt_len + 60
    out = await executor.execute("Q?", "a", params(), max_len, processor, engine, [picture(3)])
    assert len(out["observation_tokens"]) <= max_len and out["truncated"]
    assert out["extra_logs"]["errors/context_limit"] >= 1

    # A model that ends its turn with EOS after the call: no second <|im_end|> is added.
    engine = ScriptedEngine(processor, [ZOOM, "<answer>a</answer>"], eos_after=True)
    out = await agent(index_dir).execute("Q?", "a", params(), MAX_LEN, processor, engine, [picture(3)])
    assert "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>" in collapsed(
        processor, out["observation_tokens"]
    )


async def test_trajectories_run_concurrently_and_tools_do_not_block(processor, index_dir):
    backend = FlakyBackend(barrier=6)
    executor = agent(index_dir, backend=backend)
    call = '<tool_call>{"name": "image_search", "arguments": {"image": "img_0"}}</tool_call>'

    async def one(i):
        engine = ScriptedEngine(processor, [call, "<answer>Rome</answer>"])
        return await executor.execute("Q?", "rome", params(), MAX_LEN, processor, engine, [picture(i)])

    outs = await asyncio.gather(*(one(i) for i in range(6)))
    assert backend.in_flight == 6  # every trajectory's search was in flight at once
    assert all(list(o["extra_logs"]) == executor.log_keys() for o in outs)
    assert all(o["extra_logs"]["calls/image_search"] == 1 and o["reward"] == pytest.approx(0.91) for o in outs)
    assert set(ERROR_KINDS) >= {"bad_json", "unknown_tool", "timeout", "context_limit"}


def test_openrlhf_loads_the_executor_file(monkeypatch, tmp_path, index_dir):
    from openrlhf.trainer.ray import vllm_engine

    import openrlhf_tapo.agent.executor as module

    config = tmp_path / "agent.yaml"
    config.write_text(f"agent:\n  max_turns: 3\n  tools:\n    backend:\n      index_dir: {index_dir}\n")
    monkeypatch.setenv("OPENRLHF_TAPO_AGENT_CONFIG", str(config))
    executor = vllm_engine._load_agent_executor(module.__file__)
    assert isinstance(executor, AgentExecutorBase) and executor.config.max_turns == 3
    assert set(executor.runner.tools) == {"image_search", "text_search", "zoom"}


@pytest.fixture
def one_thread():
    """Single-threaded torch: on a shared 2-core machine, oversubscribed threads make training steps ~5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
async def test_real_model_reproduces_a_taught_trajectory(family, one_thread):
    """End to end with the tiny Qwen2.5-VL (and Qwen3-VL) behind the HF engine and OpenRLHF's Actor.

    A scripted rollout gives the target trajectory (zoom call, tool image, answer). The Actor is trained on it with
    the executor's own `mm_train_inputs` until greedy decoding must reproduce every action token; the real-model
    rollout must then give the same tokens, ranges and images, and its rollout log-probs must equal the Actor's
    log-probs of the finished sequence (same pixels, same M-RoPE positions, same masks).
    """
    from openrlhf.models.actor import Actor

    from openrlhf_tapo.agent.hf_engine import HFGenerationEngine

    processor = load_processor(tiny_vlm_dir(family))
    config = AgentConfig.from_dict({"tools": {"enabled": ["zoom"]}, "instructions": "Use tools, then answer."})
    image = picture(7)
    greedy = params(temperature=0.0, logprobs=0, max_tokens=64)

    def executor():
        return AgentExecutor(config, runner=build_tool_runner(config.tools))

    target = await executor().execute(
        "What colour?",
        "red",
        greedy,
        1024,
        processor,
        ScriptedEngine(processor, [ZOOM, "<answer>red</answer>"]),
        [image],
    )
    tokens, ranges, mm = target["observation_tokens"], target["action_ranges"], target["mm_train_inputs"]
    assert mm["image_grid_thw"].shape[0] == 2

    actor = Actor(str(tiny_vlm_dir(family)), attn_implementation="sdpa", param_dtype="bf16")
    assert actor.model.config.model_type == family
    actor.model.float()
    sequences = torch.tensor([tokens])
    attention = torch.ones_like(sequences)
    action_mask = torch.zeros(1, len(tokens) - 1)
    for start, end in ranges:
        action_mask[0, start - 1 : end - 1] = 1  # action_mask[:, j] scores token j + 1
    on_actions = action_mask[0].bool()
    optimizer = torch.optim.Adam(actor.parameters(), lr=1e-2)
    for _ in range(150):  # ~50 steps needed
        log_probs = actor(sequences, action_mask=action_mask, attention_mask=attention, **mm)[0][on_actions]
        if log_probs.min().exp() > 0.5:  # every target token is the argmax: greedy decoding must follow it
            break
        optimizer.zero_grad()
        (-log_probs.mean()).backward()
        optimizer.step()
    assert log_probs.min().exp() > 0.5, "the tiny model did not learn the trajectory"
    actor.eval()

    engine = HFGenerationEngine(actor.model, processor)
    out = await executor().execute("What colour?", "red", greedy, 1024, processor, engine, [image])
    assert out["observation_tokens"] == tokens and out["action_ranges"] == ranges
    assert torch.equal(out["mm_train_inputs"]["pixel_values"], mm["pixel_values"])
    assert out["reward"] == pytest.approx(1.0) and out["extra_logs"]["calls/zoom"] == 1
    assert engine.requests == 2
    with torch.no_grad():
        trained = actor(sequences, action_mask=action_mask, attention_mask=attention, **mm)[0]
    rollout = torch.tensor(out["rollout_log_probs"][1:])
    assert torch.allclose(trained[on_actions], rollout[on_actions], atol=1e-4)
    assert torch.all(rollout[~on_actions] == 0)


class BrokenImageBackend(FlakyBackend):
    """Returns one hit whose image is a lazily opened, truncated PNG: it fails only when its pixels are read."""

    async def image_search(self, image, top_k, *, image_url=None):
        import io

        from openrlhf_tapo.search.base import ImageHit

        buffer = io.BytesIO()
        picture(5, (60, 60)).save(buffer, "PNG")
        broken = Image.open(io.BytesIO(buffer.getvalue()[:200]))
        return [ImageHit(title="Broken", url="https://b", image=broken)]


async def test_undecodable_tool_image_gives_a_text_observation(processor, index_dir):
    executor = agent(index_dir, backend=BrokenImageBackend())
    call = '<tool_call>{"name": "image_search", "arguments": {}}</tool_call>'
    engine = ScriptedEngine(processor, [call, "<answer>Rome</answer>"])
    out = await executor.execute("Q?", "Rome", params(), MAX_LEN, processor, engine, [picture(4)])
    logs = out["extra_logs"]
    assert logs["errors/bad_image"] == 1 and logs["errors"] == 1 and logs["answered"] == 1
    text = collapsed(processor, out["observation_tokens"])
    response = text[text.index("<tool_response>\n") :]
    assert "<|vision_start|>" not in response and "(the returned images could not be processed)" in response
    assert len(engine.requests[1]["images"]) == 1
    assert out["mm_train_inputs"]["image_grid_thw"].shape[0] == 1


TURN_FRAGMENTS = [
    SEARCH,
    ZOOM,
    '<tool_call>{"name": "image_search", "arguments": {"image": "img_1", "bbox": [0, 0, 999, 999]}}</tool_call>',
    '<tool_call>{"name": "zoom", "arguments": {"image": "img_2", "bbox": [10, 10, 20, 20]}}</tool_call>',
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "<|im_end|>",
    "<tool_response>",
    '{"name": "zoom"',
    "thinking ",
    "img_0 ",
]


@settings(max_examples=25, deadline=None)
# An answer before a call ends the trajectory: the call never ran, and the TAPO stage must not record it (found here).
@example(
    turns=['<answer></answer><tool_call>{"name": "text_search", "arguments": {"query": "Eiffel Tower"}}</tool_call>'],
    room=27,
)
@given(
    turns=st.lists(st.lists(st.sampled_from(TURN_FRAGMENTS), max_size=4).map("".join), min_size=1, max_size=6),
    room=st.integers(16, 500),
)
def test_any_model_output_keeps_the_bookkeeping_consistent(processor, index_dir, turns, room):
    executor = agent(index_dir, max_turns=4, max_tokens_per_turn=48, instructions="Answer.")
    prompt = protocol.build_prompt("Q?", 2, executor.runner.schemas(), "Answer.")
    max_len = len(process_prompt_with_images(processor, prompt, [picture(0), picture(1)])[0]) + room
    engine = ScriptedEngine(processor, turns + ["<answer>x</answer>"] * 4)
    out = asyncio.run(
        executor.execute("Q?", "x", params(logprobs=0), max_len, processor, engine, [picture(0), picture(1)])
    )
    tokens, ranges = out["observation_tokens"], out["action_ranges"]
    assert len(tokens) <= max_len and len(out["rollout_log_probs"]) == len(tokens)
    assert all(a <= b for a, b in ranges) and all(e <= s for (_, e), (s, _) in zip(ranges, ranges[1:], strict=False))
    assert list(out["extra_logs"]) == executor.log_keys() and 0.0 <= out["reward"] <= 1.0
    grid = out["mm_train_inputs"]["image_grid_thw"]
    assert sum(t == processor.image_token_id for t in tokens) == int(grid.prod(dim=1).sum()) // 4
    assert len(engine.requests) == len(ranges) == out["extra_logs"]["turns"]


async def test_prompt_rendered_by_openrlhf_chat_template_is_adopted(processor, index_dir):
    executor = agent(index_dir)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which city?"}]}]
    rendered = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    engine = ScriptedEngine(processor, ["<answer>Paris</answer>"])
    out = await executor.execute(rendered, "Paris", params(), MAX_LEN, processor, engine, [picture(3)])
    text = collapsed(processor, out["observation_tokens"])
    expected = protocol.build_prompt("Which city?", 1, executor.runner.schemas()) + "<answer>Paris</answer>"
    assert text == expected and out["reward"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "turns, answer, kind",
    [
        ([SEARCH, "<answer>Rome</answer>"], "paris", "wrong_answer"),  # the observation names Paris
        (['<tool_call>{"name": "zoom", "arguments": {"image"</tool_call>', SEARCH, "<answer>Rome</answer>"],
         "paris", "malformed_call"),
        ([SEARCH, "<answer>Rome</answer>"], "berlin", "wrong_parameters"),  # no passage holds Berlin
        (["<answer>Rome</answer>"], "paris", "no_call"),
        ([SEARCH, "I am not sure."], "paris", "no_answer"),
        ([SEARCH, "<answer>Paris</answer>"], "paris", None),
    ],
)  # fmt: skip
async def test_failing_trajectories_log_their_first_error(processor, index_dir, turns, answer, kind):
    from openrlhf_tapo.agent.failures import FAILURE_KINDS

    executor = agent(index_dir)
    out = await executor.execute("Where?", answer, params(), MAX_LEN, processor, ScriptedEngine(processor, turns))
    logged = {k.removeprefix("failure/"): v for k, v in out["extra_logs"].items() if k.startswith("failure/")}
    assert set(logged) == set(FAILURE_KINDS)
    assert logged == {k: float(k == kind) for k in FAILURE_KINDS}
