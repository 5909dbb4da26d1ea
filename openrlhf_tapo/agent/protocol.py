"""The text protocol between the policy model and its tools (Qwen / Hermes style), in one place.

A trajectory, as the model sees it (ChatML, Qwen2.5-VL vision placeholders)::

    <|im_start|>system
    ...instructions...
    <tools>
    {"type": "function", "function": {"name": "text_search", ...}}
    </tools><|im_end|>
    <|im_start|>user
    [img_0] <|vision_start|><|image_pad|><|vision_end|>
    What is the country of origin of this food?<|im_end|>
    <|im_start|>assistant
    ...reasoning...<tool_call>{"name": "image_search", "arguments": {"image": "img_0"}}</tool_call><|im_end|>
    <|im_start|>user
    <tool_response>
    1. [img_1] <|vision_start|><|image_pad|><|vision_end|> Paella - Wikipedia ...
    </tool_response><|im_end|>
    <|im_start|>assistant
    ...<answer>Spain</answer>

- Generation stops at `</tool_call>` or `</answer>` (`STOP_STRINGS`), so an assistant turn holds at most one call.
- Image references: the question images are `img_0`, `img_1`, ...; every image a tool returns gets the next free
  id in order of appearance, and the tool response shows its label right before its vision placeholder.
- `parse_tool_calls` is THE parser: the rollout executor runs it on each generated turn and the TAPO stage runs it
  on each action span it recovers from tokens (`agent/call_record.py`), so the example call in the system prompt and
  any `<tool_call>` text a web page returns are never taken for calls.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from openrlhf_tapo.utils.text import replace_surrogates

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
IMAGE_PAD = "<|image_pad|>"
VISION_END = "<|vision_end|>"
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END
# Tokens the policy must never generate: a placeholder it writes has no image behind it, which breaks the next
# turn's prompt/image alignment and Qwen-VL's M-RoPE index in the training forward. Passed as vLLM `bad_words`.
VISION_SPECIAL_TOKENS = (VISION_START, IMAGE_PAD, VISION_END, "<|video_pad|>")

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOLS_OPEN, TOOLS_CLOSE = "<tools>", "</tools>"

STOP_STRINGS: tuple[str, ...] = (TOOL_CALL_CLOSE, ANSWER_CLOSE)

ASSISTANT_HEADER = f"{IM_START}assistant\n"

# Error kinds set by the parser (the tool layer adds its own: "unknown_tool", "bad_arguments", ...).
BAD_JSON = "bad_json"  # the text between the tags is not one JSON object
BAD_CALL = "bad_call"  # JSON, but not {"name": str, "arguments": object}
UNCLOSED = "unclosed"  # `<tool_call>` without its `</tool_call>` (cut by a token limit or by the next `<tool_call>`)

DEFAULT_INSTRUCTIONS = (
    "You are a helpful assistant that answers questions about images. You may call tools to search for information "
    "before answering. Images are referred to by their labels: the question images are img_0, img_1, ...; every "
    "image a tool returns gets the next free label, shown right before it. Bounding boxes are [x1, y1, x2, y2] in "
    "0-1000 coordinates relative to the image width and height.\n\n"
    "Think step by step. To call a tool, write exactly one call and stop:\n"
    '<tool_call>{"name": <tool name>, "arguments": <JSON object>}</tool_call>\n'
    "The result comes back inside <tool_response></tool_response>. When you know the answer, write it as a short "
    "phrase inside <answer></answer> and stop."
)


@dataclass(frozen=True)
class ParsedToolCall:
    """One `<tool_call>...</tool_call>` block found in a text.

    `start`/`end` are character offsets of the whole block, tags included (half-open, `text[start:end]`), in the
    text given to the parser. `name`/`arguments` are set when the block parsed; `error` is one of `BAD_JSON`,
    `BAD_CALL`, `UNCLOSED` otherwise (name may still be set for a `BAD_CALL` whose arguments are wrong).
    `raw` is the text between the tags.
    """

    name: str | None
    arguments: dict | None
    start: int
    end: int
    error: str | None = None
    raw: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _decode_call(raw: str) -> tuple[str | None, dict | None, str | None]:
    """(name, arguments, error) of the text between the tags.

    Accepted leniently, because models write these and a parse failure costs a whole turn: surrounding whitespace,
    a Markdown code fence, `arguments` given as a JSON-encoded string, `parameters` as an alias of `arguments`,
    and a missing `arguments` (taken as `{}`; the tool decides whether that is valid).
    """
    body = raw.strip()
    fenced = _FENCE_RE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        obj, stop = json.JSONDecoder().raw_decode(body)
    except (ValueError, RecursionError):  # ValueError, not only JSONDecodeError: an integer of over 4,300 digits
        return None, None, BAD_JSON
    if body[stop:].strip():
        return None, None, BAD_JSON
    if not isinstance(obj, dict):
        return None, None, BAD_CALL
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, None, BAD_CALL
    name = name.strip()
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            return name, None, BAD_CALL
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return name, None, BAD_CALL
    return name, args, None


def parse_tool_calls(text: str) -> list[ParsedToolCall]:
    """Every tool-call block in `text` (one assistant turn, or any text you want scanned), in order.

    Never raises. A block runs from `<tool_call>` to the next `</tool_call>`; a `<tool_call>` whose close never
    comes (or comes only after another `<tool_call>`) gives an `UNCLOSED` entry that ends where the next block
    starts, or at the end of the text. A stray `</tool_call>` without an opening tag is ignored.
    """
    calls: list[ParsedToolCall] = []
    pos = 0
    while True:
        start = text.find(TOOL_CALL_OPEN, pos)
        if start < 0:
            return calls
        body_start = start + len(TOOL_CALL_OPEN)
        close = text.find(TOOL_CALL_CLOSE, body_start)
        next_open = text.find(TOOL_CALL_OPEN, body_start)
        if close < 0 or 0 <= next_open < close:
            end = next_open if next_open >= 0 else len(text)
            calls.append(ParsedToolCall(None, None, start, end, UNCLOSED, text[body_start:end]))
            pos = end
            continue
        raw = text[body_start:close]
        end = close + len(TOOL_CALL_CLOSE)
        name, args, error = _decode_call(raw)
        calls.append(ParsedToolCall(name, args, start, end, error, raw))
        pos = end


def ending_answer(text: str, calls: list[ParsedToolCall]) -> str | None:
    """The answer that ends a turn (its first complete `<answer>...</answer>`, when it opens before the turn's first
    tool call), or None: then the turn's calls are the ones run. The rollout ends a trajectory on it, and the TAPO
    stage's call recovery leaves that turn's later calls out, as the rollout never ran them."""
    answer_end = text.find(ANSWER_CLOSE)
    if answer_end < 0:
        return None
    answer = parse_answer(text[: answer_end + len(ANSWER_CLOSE)])
    answer_start = text.rfind(ANSWER_OPEN, 0, answer_end) if answer is not None else -1
    return answer if answer is not None and (not calls or answer_start < calls[0].start) else None


def parse_answer(text: str) -> str | None:
    """The content of the last complete `<answer>...</answer>` in `text`, stripped; None when there is none.

    An `<answer>` without its close (the turn hit its token limit) is not an answer.
    """
    end = text.rfind(ANSWER_CLOSE)
    if end < 0:
        return None
    start = text.rfind(ANSWER_OPEN, 0, end)
    if start < 0:
        return None
    return text[start + len(ANSWER_OPEN) : end].strip()


# ---------------------------------------------------------------------------------------------- prompt rendering


def function_schema(schema: dict) -> dict:
    """`{"type": "function", "function": {...}}`, whether given that or the bare `{"name", "description", ...}`."""
    if schema.get("type") == "function" and "function" in schema:
        return schema
    return {"type": "function", "function": schema}


def render_tools(schemas: Iterable[dict]) -> str:
    """The `<tools>` block: one OpenAI function schema per line, as Qwen's Hermes chat template writes it."""
    lines = [json.dumps(function_schema(s), ensure_ascii=False) for s in schemas]
    return TOOLS_OPEN + "\n" + "\n".join(lines) + "\n" + TOOLS_CLOSE


def system_prompt(schemas: Sequence[dict], instructions: str = DEFAULT_INSTRUCTIONS) -> str:
    """Instructions followed by the tools block (no tools: instructions only)."""
    if not schemas:
        return instructions
    return (
        f"{instructions}\n\n# Tools\n\nYou may call the functions below to assist with the user query, one call per "
        "turn.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n" + render_tools(schemas)
    )


def image_ref(index: int) -> str:
    return f"img_{index}"


def image_label(ref: str) -> str:
    """How an image is labelled in the text right before its placeholder."""
    return f"[{ref}] {IMAGE_PLACEHOLDER}"


def _question_images(num_images: int, note: str) -> str:
    labels = "".join(image_label(image_ref(i)) + "\n" for i in range(num_images))
    return labels + (f"({note})\n" if note else "")


def build_prompt(
    question: str,
    num_images: int,
    schemas: Sequence[dict],
    instructions: str = DEFAULT_INSTRUCTIONS,
    note: str = "",
) -> str:
    """The full first prompt: system turn with tools, user turn with the labelled question images, assistant header.

    `question` is dataset text (trusted, not sanitised); `<image>` markers in it (OpenRLHF's dataset convention) are
    dropped, since the images are placed here, labelled, in front of the question. `note` (e.g. that an image
    could not be loaded) goes between the images and the question.
    """
    question = question.replace("<image>", "").strip()
    return (
        f"{IM_START}system\n{system_prompt(schemas, instructions)}{IM_END}\n"
        f"{IM_START}user\n{_question_images(num_images, note)}{question}{IM_END}\n{ASSISTANT_HEADER}"
    )


def with_system_prompt(
    rendered_prompt: str,
    num_images: int,
    schemas: Sequence[dict],
    instructions: str = DEFAULT_INSTRUCTIONS,
    note: str = "",
) -> str:
    """A prompt already rendered with a chat template (`--data.apply_chat_template`), made to follow the protocol.

    The tools system turn is added (a leading system turn keeps its text, followed by ours; a prompt that already
    has a `<tools>` block keeps its own). Image placeholders the template wrote are replaced by the labelled
    question images at the start of the first user turn, so labels and placeholders always match the images.
    """
    text = rendered_prompt.replace(IMAGE_PLACEHOLDER, "").replace("<image>", "")
    user = f"{IM_START}user\n"
    at = text.find(user)
    if at >= 0:
        at += len(user)
        text = text[:at] + _question_images(num_images, note) + text[at:]
    else:
        text = _question_images(num_images, note) + text
    if TOOLS_OPEN in text:
        return text
    head = f"{IM_START}system\n"
    if text.startswith(head):
        end = text.find(IM_END, len(head))
        if end >= 0:
            own = text[len(head) : end].strip()
            merged = own + "\n\n" + instructions if own else instructions
            return f"{head}{system_prompt(schemas, merged)}{text[end:]}"
    return f"{head}{system_prompt(schemas, instructions)}{IM_END}\n{text}"


# Markers an observation must not contain verbatim: chat/vision special tokens would be tokenized as control tokens,
# and protocol tags would make tool output look like model actions or close the response early.
_PROTECTED = re.compile(r"<\|[a-z_]+\|>|</?(?:tool_call|tool_response|answer|tools)>")


def sanitize(text: str) -> str:
    """Neutralise special tokens and protocol tags in untrusted text by escaping their `<` as `&lt;`, and replace
    lone surrogates (which no tokenizer accepts)."""
    return _PROTECTED.sub(lambda m: "&lt;" + m.group(0)[1:], replace_surrogates(text))


def place_images(text: str, refs: Sequence[str]) -> tuple[str, list[str]]:
    """Insert a vision placeholder for each ref and return (text, refs in placeholder order).

    `text` must be sanitised (so it holds no placeholder of its own). Where it already labels an image
    (`[img_3] title`), the placeholder goes right after the first such label; images the text does not mention are
    appended as `[img_K] <placeholder>` lines. The returned order is the order the placeholders appear in, which is
    the order the processor assigns pixel inputs to them.
    """
    pending = []
    for ref in refs:
        label = f"[{ref}]"
        at = text.find(label)
        if at >= 0:
            text = text[: at + len(label)] + " " + IMAGE_PLACEHOLDER + text[at + len(label) :]
        else:
            pending.append(ref)
    if pending:
        text = text.rstrip("\n") + ("\n" if text.strip() else "") + "\n".join(image_label(r) for r in pending)
    return text, sorted(refs, key=lambda ref: text.find(f"[{ref}] {IMAGE_PLACEHOLDER}"))


def format_tool_response(
    text: str, refs: Sequence[str] = (), close_assistant: bool = True, notice: str = ""
) -> tuple[str, list[str]]:
    """The environment turn after a tool call: (text to append, image refs in placeholder order).

    `text` (tool output: untrusted) is sanitised; `notice` (ours, e.g. "answer now") is appended as is.
    `close_assistant` adds the `<|im_end|>` that ends the model's turn (the model stopped at `</tool_call>`, not at
    its end-of-turn token). The turn ends with the next assistant header, so generation continues right after it.
    """
    body, order = place_images(sanitize(text).strip("\n"), refs)
    if notice:
        body = f"{body}\n{notice}" if body else notice
    prefix = IM_END if close_assistant else ""
    return (
        f"{prefix}\n{IM_START}user\n{TOOL_RESPONSE_OPEN}\n{body}\n{TOOL_RESPONSE_CLOSE}{IM_END}\n{ASSISTANT_HEADER}",
        order,
    )


def format_error(kind: str, message: str) -> str:
    """Observation text for a failed call, readable by the model: the kind first, then what to do about it."""
    return f"Error ({kind}): {message}"
