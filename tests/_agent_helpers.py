"""Helpers for the agent tests (imported by plain name: tests/ is not a package).

- `tiny_vlm_dir(family)`: one tiny Qwen2.5-VL (or Qwen3-VL) per test process, built offline into a temporary folder.
- `ScriptedEngine`: the vLLM `generate` contract, answering each turn with the next scripted text (exact
  multi-turn checks independent of a model), honouring `max_tokens` and stop strings like vLLM.
- `make_index` / `runner_for`: a small real LocalIndex and ToolRunner.
- `LookupTool`: a custom tool, enabled in an agent YAML as `_agent_helpers:LookupTool` (tests/ is on sys.path).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from openrlhf_tapo.agent.hf_engine import CompletionOutput, Logprob, RequestOutput
from openrlhf_tapo.agent.protocol import DEFAULT_INSTRUCTIONS
from openrlhf_tapo.task.tiny_model import build_tiny_vlm
from openrlhf_tapo.tools.base import Tool, ToolArgumentError, ToolResult, check_keys

CORPUS = [
    '<tool_call>{"name": "text_search", "arguments": {"query": "Eiffel Tower height"}}</tool_call>',
    '<tool_call>{"name": "image_search", "arguments": {"image": "img_0"}}</tool_call>',
    '<tool_call>{"name": "zoom", "arguments": {"image": "img_0", "bbox": [0, 0, 500, 500]}}</tool_call>',
    "<answer>Paris</answer> <answer>red</answer> I should search for the tower first.",
    "<tool_response>\n1. Eiffel Tower\nURL: u/1\nThe Eiffel Tower is a wrought-iron tower in Paris.\n</tool_response>",
    "What is the country of origin of this food? Who commissioned this building? img_0 img_1 img_2",
] * 20 + [DEFAULT_INSTRUCTIONS] * 5

PASSAGES = [
    {
        "id": "eiffel",
        "title": "Eiffel Tower",
        "text": "The Eiffel Tower is a wrought-iron tower in Paris.",
        "url": "u/1",
    },
    {"id": "colosseum", "title": "Colosseum", "text": "The Colosseum is an amphitheatre in Rome.", "url": "u/2"},
    {"id": "bigben", "title": "Big Ben", "text": "Big Ben is the bell of the clock tower in London.", "url": "u/3"},
]


@functools.cache
def tiny_vlm_dir(family: str = "qwen2_5_vl") -> Path:
    out = Path(tempfile.mkdtemp(prefix="tiny_vlm_"))
    atexit.register(shutil.rmtree, out, True)
    return build_tiny_vlm(out / "model", CORPUS, seed=0, family=family)


def picture(seed: int, size: tuple[int, int] = (84, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, min(size) // 2, 2))
        draw.rectangle([x, y, x + 20, y + 15], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def make_index(directory: Path):
    from openrlhf_tapo.search.local_index import LocalIndex

    images = [
        {"id": f"p{i}", "title": f"Picture {i}", "url": f"https://img/{i}", "image": picture(i)} for i in range(4)
    ]
    return LocalIndex.build(PASSAGES, images, directory)


class ScriptedEngine:
    """Answers request k with `turns[k]` encoded by `tokenizer` (cut at a stop string or max_tokens, as vLLM)."""

    def __init__(self, tokenizer, turns: list[str], eos_after: bool = False):
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.turns = list(turns)
        self.eos_after = eos_after
        self.requests: list[dict] = []

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        self.requests.append(
            {
                "tokens": list(prompt_token_ids),
                "max_tokens": sampling_params.max_tokens,
                "stop": list(sampling_params.stop or []),
                "include_stop": getattr(sampling_params, "include_stop_str_in_output", False),
                "bad_words": list(getattr(sampling_params, "bad_words", None) or []),
                "images": list((multi_modal_data or {}).get("image", [])),
            }
        )
        text = self.turns.pop(0)
        tokens = self.tokenizer.encode(text, add_special_tokens=False)
        finish = "stop"
        if self.eos_after:
            tokens.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        if len(tokens) > sampling_params.max_tokens:
            tokens, finish = tokens[: sampling_params.max_tokens], "length"
        logprobs = (
            [{t: Logprob(-0.5)} for t in tokens] if getattr(sampling_params, "logprobs", None) is not None else None
        )
        return RequestOutput(list(prompt_token_ids), [CompletionOutput(0, text, tokens, finish, None, logprobs)])


class LookupTool(Tool):
    """lookup {"key": str}: a tool outside the built-in ones; its canonical form lower-cases and strips the key."""

    name = "lookup"
    description = "Look a key up in a fixed table."
    cacheable = False

    def __init__(self, *, backend, config):
        self.config = config

    def parameters_schema(self) -> dict:
        return {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}

    def canonicalize(self, arguments: dict) -> dict:
        key = check_keys(arguments, self.name, ("key",))["key"]
        if not isinstance(key, str) or not key.strip():
            raise ToolArgumentError("lookup: 'key' must be a non-empty string")
        return {"key": key.strip().lower()}

    async def execute(self, params: dict, ctx) -> ToolResult:
        return ToolResult(text=f"{params['key']} = 42")
