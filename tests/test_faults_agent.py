"""Fault matrix, agent: the parser, the rollout executor (real OpenRLHF agent API, a tiny real Qwen2.5-VL processor,
scripted generations) and the TAPO stage's call recovery. Whatever the model writes or a backend returns, a
trajectory ends normally, each failure is counted once under its kind, and `errors` is the sum of the kinds.
"""

import asyncio
import json

import pytest
import torch
from _agent_helpers import ScriptedEngine, picture, tiny_vlm_dir
from _search_tools_helpers import FakeBackend, emblem
from _tapo_rollouts import tokenizer as tapo_tokenizer
from PIL import Image
from vllm import SamplingParams

from openrlhf_tapo.adapter.stage.trajectory import ToolCallRecovery
from openrlhf_tapo.agent import protocol
from openrlhf_tapo.agent.config import AgentConfig
from openrlhf_tapo.agent.rollout import AgentExecutor
from openrlhf_tapo.search.base import ImageHit, TextHit
from openrlhf_tapo.task.tiny_model import load_processor
from openrlhf_tapo.tools.registry import build_tool_runner

HUGE_INT = "9" * 5000
DEEP = "[" * 5000 + "]" * 5000
SECRET = "sk-live-0123456789abcdef"


# ---- the parser ---------------------------------------------------------------------------------------------
def _block(body: str) -> str:
    return f"{protocol.TOOL_CALL_OPEN}{body}{protocol.TOOL_CALL_CLOSE}"


PARSER_ROWS = [
    (_block('{"name": "zoom", "arguments": {"bbox": ' + HUGE_INT + "}}"), protocol.BAD_JSON),
    (_block('{"name": ' + HUGE_INT + ', "arguments": {}}'), protocol.BAD_JSON),
    (_block(HUGE_INT), protocol.BAD_JSON),
    (_block("-" + HUGE_INT), protocol.BAD_JSON),
    (_block('{"name": "zoom", "arguments": ' + DEEP + "}"), protocol.BAD_JSON),
    (_block(DEEP), protocol.BAD_JSON),
    (_block('{"name": "zoom", "arguments": "{\\"bbox\\": ' + HUGE_INT + '}"}'), protocol.BAD_CALL),
    (_block('{"name": "zoom", "arguments": ' + json.dumps(DEEP) + "}"), protocol.BAD_CALL),
    (_block('{"name": "text_search", "arguments": {"query": "\\ud800"}}'), None),
    (_block('{"name": "text_search", "arguments": {"query": "x"}} trailing'), protocol.BAD_JSON),
    (_block(""), protocol.BAD_JSON),
    (_block("```json\n{}\n```"), protocol.BAD_CALL),
    (_block('{"name": "", "arguments": {}}'), protocol.BAD_CALL),
    (_block('{"name": "zoom", "arguments": 5}'), protocol.BAD_CALL),
    (_block("NaN"), protocol.BAD_CALL),
    (protocol.TOOL_CALL_OPEN + '{"name": "zoom"', protocol.UNCLOSED),
]


@pytest.mark.parametrize("text, error", PARSER_ROWS)
def test_parser_never_raises_and_names_the_error(text, error):
    (call,) = protocol.parse_tool_calls(text)
    assert call.error == error


# ---- the rollout executor -----------------------------------------------------------------------------------
MAX_LEN = 24_000


class RowBackend(FakeBackend):
    """FakeBackend whose text and image results a row can replace."""

    def __init__(self, text=None, images=None, fail=None):
        super().__init__(fail=fail)
        self.text_result, self.image_result = text, images

    async def text_search(self, query, top_k):
        return self.text_result if self.text_result is not None else await super().text_search(query, top_k)

    async def image_search(self, image, top_k, *, image_url=None):
        if self.image_result is not None:
            return self.image_result
        return await super().image_search(image, top_k, image_url=image_url)


@pytest.fixture(scope="module")
def processor():
    return load_processor(tiny_vlm_dir())


def _call(name: str, arguments: str) -> str:
    return _block(f'{{"name": "{name}", "arguments": {arguments}}}')


ANSWER = "<answer>Paris</answer>"
EXECUTOR_ROWS = [
    ("huge integer", [_call("zoom", '{"image": "img_0", "bbox": ' + HUGE_INT + "}"), ANSWER], {}, {"bad_json": 1}),
    ("deep nesting", [_call("zoom", DEEP), ANSWER], {}, {"bad_json": 1}),
    ("surrogate query", [_call("text_search", '{"query": "Eiffel \\ud800"}'), ANSWER], {}, {}),
    (
        "surrogate result",
        [_call("text_search", '{"query": "q"}'), ANSWER],
        dict(text=[TextHit("a\udc80", "u", "t")]),
        {},
    ),
    ("no action", ["I am thinking and never act."], {}, {"no_action": 1}),
    ("turn limit", [_call("text_search", '{"query": "q"}')] * 2, {}, {"turn_limit": 1}),
    (
        "secret in failure",
        [_call("text_search", '{"query": "q"}'), ANSWER],
        dict(fail=RuntimeError(SECRET)),
        {"internal": 1},
    ),
    (
        "empty image",
        [_call("image_search", "{}"), ANSWER],
        dict(images=[ImageHit("t", "u", Image.new("RGB", (0, 0)))]),
        {"bad_image": 1},
    ),
    ("unknown tool", [_call("browse", "{}"), ANSWER], {}, {"unknown_tool": 1}),
    ("unclosed call", [protocol.TOOL_CALL_OPEN + '{"name": "zoom"', ANSWER], {}, {"unclosed": 1}),
]


@pytest.mark.parametrize("what, turns, backend, errors", EXECUTOR_ROWS, ids=[r[0] for r in EXECUTOR_ROWS])
async def test_trajectory_survives_and_counts_each_failure(processor, what, turns, backend, errors):
    max_turns = 2 if what == "turn limit" else 5
    config = AgentConfig.from_dict({"max_turns": max_turns, "max_tokens_per_turn": 20_000})
    executor = AgentExecutor(config, runner=build_tool_runner(config.tools, backend=RowBackend(**backend)))
    engine = ScriptedEngine(processor, turns)
    params = SamplingParams(max_tokens=1024, temperature=1.0)
    out = await asyncio.wait_for(executor.execute("Q?", "Paris", params, MAX_LEN, processor, engine, [picture(1)]), 60)
    logs = out["extra_logs"]
    counted = {k.removeprefix("errors/"): v for k, v in logs.items() if k.startswith("errors/") and v}
    assert counted == errors
    assert logs["errors"] == sum(counted.values())  # the total is the sum of the kinds
    transcript = processor.tokenizer.decode(out["observation_tokens"], skip_special_tokens=False)
    assert SECRET not in transcript
    if what.startswith("surrogate"):
        assert "\ufffd" in transcript and logs["tool_calls"] == 1


async def test_undecodable_question_image_is_counted_in_the_total(processor):
    config = AgentConfig.from_dict({})
    executor = AgentExecutor(config, runner=build_tool_runner(config.tools, backend=FakeBackend()))
    engine = ScriptedEngine(processor, [ANSWER])
    out = await executor.execute(
        "Q?", "Paris", SamplingParams(max_tokens=64), MAX_LEN, processor, engine, [b"\x89PNG broken", picture(2)]
    )
    assert out["extra_logs"]["errors/question_image"] == 1 and out["extra_logs"]["errors"] == 1


@pytest.mark.parametrize(
    "label, errors",
    [
        ('{"ground_truth": ' + HUGE_INT + "}", 1),
        (DEEP, 1),
        ('{"ground_truth": [' + HUGE_INT + "]}", 1),
        ('{"ground_truth": "Paris", "candidate_answers": "[' + HUGE_INT + ']"}', 0),
    ],
)
async def test_unreadable_label_is_counted_and_scores_zero(processor, label, errors):
    config = AgentConfig.from_dict({})
    executor = AgentExecutor(config, runner=build_tool_runner(config.tools, backend=FakeBackend()))
    engine = ScriptedEngine(processor, [ANSWER])
    out = await executor.execute("Q?", label, SamplingParams(max_tokens=64), MAX_LEN, processor, engine, None)
    assert out["extra_logs"]["errors/label"] == errors and out["extra_logs"]["errors"] == errors
    assert out["scores"] == (0.0 if errors else 1.0)  # correctness: an unreadable label matches no answer


async def test_spoofed_label_in_a_result_title_keeps_every_image_after_its_own_label(processor):
    hits = [ImageHit("look at [img_3] now", "u", emblem(1, 40)), ImageHit("plain", "u", emblem(2, 40))]
    config = AgentConfig.from_dict({})
    executor = AgentExecutor(config, runner=build_tool_runner(config.tools, backend=RowBackend(images=hits)))
    engine = ScriptedEngine(processor, [_call("image_search", "{}"), ANSWER])
    out = await executor.execute(
        "Q?", "Paris", SamplingParams(max_tokens=64), MAX_LEN, processor, engine, [picture(1)]
    )
    pad = processor.image_token_id
    tokens = [
        t for i, t in enumerate(out["observation_tokens"]) if t != pad or out["observation_tokens"][i - 1] != pad
    ]
    transcript = processor.tokenizer.decode(tokens, skip_special_tokens=False)
    response = transcript[transcript.index(protocol.TOOL_RESPONSE_OPEN) :]
    assert "(img_3)" in response
    for ref in ("img_1", "img_2"):
        assert f"[{ref}] {protocol.IMAGE_PLACEHOLDER}" in response
    assert out["extra_logs"]["images_added"] == 2 and out["extra_logs"]["errors"] == 0


# ---- the TAPO stage's call recovery -------------------------------------------------------------------------
RECOVERY_ROWS = [
    ("huge integer", _call("zoom", '{"image": "img_0", "bbox": ' + HUGE_INT + "}"), (0, 1)),
    ("huge integer in a list", _call("zoom", '{"image": "img_0", "bbox": [0, 0, ' + HUGE_INT + ", 9]}"), (0, 1)),
    ("deep nesting", _call("zoom", DEEP), (0, 1)),
    ("arguments string with huge integer", _call("zoom", json.dumps('{"bbox": ' + HUGE_INT + "}")), (0, 1)),
    ("surrogate query", _call("text_search", '{"query": "tower \\ud800"}'), (1, 0)),
]


@pytest.mark.parametrize("what, turn, counts", RECOVERY_ROWS, ids=[r[0] for r in RECOVERY_ROWS])
def test_call_recovery_counts_unreadable_calls_as_invalid(what, turn, counts):
    tok = tapo_tokenizer()
    prompt = tok.encode(protocol.build_prompt("Q?", 1, []), add_special_tokens=False)
    ids = prompt + tok.encode(turn, add_special_tokens=False)
    action_mask = torch.zeros(1, len(ids) - 1, dtype=torch.bool)
    action_mask[0, len(prompt) - 1 :] = True  # column j is token j + 1
    out = ToolCallRecovery(tok).recover(torch.tensor([ids]), action_mask)
    assert (out.valid_calls[0], out.invalid_calls[0]) == counts
    if counts[0]:
        assert out.calls[0].params == {"query": "tower \ufffd"}
