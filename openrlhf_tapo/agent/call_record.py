"""One tool-call record from rollout to TAPO: a call's `ToolCall`, built by the same code on both sides.

The rollout executor (rollout.py) builds the records of a turn while it runs it, from the turn's tokens, the calls
it parsed and the tool response it appended; the TAPO stage (adapter/stage/trajectory.py) rebuilds them from OpenRLHF's
token tensors, where the turn is a run of the action mask and the response the masked tokens after it. Both go
through `turn_records`, so both:

- decode a turn exactly (`Decoder`: special tokens kept, no clean-up) and parse it with `protocol.parse_tool_calls`;
- map a call's characters back to the tokens that produced it (`TokenText`), in advantage columns;
- canonicalise with the `canonical_params` of a runner built from the run's own tools config (custom tools from
  `tools.enabled` and raised limits such as `max_query_chars` count the same in rollout and TAPO stage);
- read the observation inside `<tool_response>` (`observation_text`) and call a call failed when the observation
  is the tools' error text (`tools.base.is_error_text`), the only trace a failure leaves in the tokens.

The rollout does not know its row in the training batch: its records have `traj = 0`.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Sequence

from tokenizers import decoders

from openrlhf_tapo.agent.protocol import (
    IMAGE_PAD,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    VISION_END,
    VISION_START,
    ParsedToolCall,
)
from openrlhf_tapo.algorithms.tapo import ToolCall
from openrlhf_tapo.tools.base import is_error_text

REPLACEMENT_CHAR = "\ufffd"
_VISION_BLOCK = re.compile(re.escape(VISION_START) + f"(?:{re.escape(IMAGE_PAD)})*" + re.escape(VISION_END))
_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")


def observation_text(decoded: str) -> str:
    """The tool's answer inside a decoded environment turn, as TAPO's observation check compares it.

    Takes the text inside `<tool_response>...</tool_response>` (all of them, joined by newlines) and drops vision
    placeholders (their length depends on the image size, not on what the tool said) and other special tokens. An
    environment turn without the tags (e.g. cut by the context limit) gives its whole text, cleaned the same way.
    """
    parts = []
    pos = 0
    while (start := decoded.find(TOOL_RESPONSE_OPEN, pos)) >= 0:
        end = decoded.find(TOOL_RESPONSE_CLOSE, start)
        stop = end if end >= 0 else len(decoded)
        parts.append(decoded[start + len(TOOL_RESPONSE_OPEN) : stop])
        pos = stop
    text = "\n".join(parts) if parts else decoded
    text = _VISION_BLOCK.sub("", text)
    return _SPECIAL_TOKEN.sub("", text).strip()


class Decoder:
    """Exact decoding (special tokens kept, no clean-up): what the model wrote, character for character.

    Goes straight to the Rust tokenizer of a fast HF tokenizer (`backend_tokenizer`; transformers' own `decode` does
    the same call plus Python-side argument handling that costs more than the decoding); other tokenizers use their
    `decode` / `batch_decode` with the same settings. A processor's own tokenizer is used.

    Byte-level BPE (GPT-2, Qwen: a `ByteLevel` decoder) maps each token to its bytes and reads them all as UTF-8, so
    a token list decodes to the concatenation of its tokens decoded alone whenever none of those holds a partial
    character (U+FFFD alone). Those texts are cached per token id, and joining them is several times cheaper than
    decoding again (the TAPO stage decodes every turn of the batch); any U+FFFD sends the list to the real decoder.
    """

    def __init__(self, tokenizer):
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self._backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._pieces: dict[int, str] = {}  # token id -> its text decoded alone (bounded by the vocabulary)
        self._piecewise = self._backend is not None and isinstance(self._backend.decoder, decoders.ByteLevel)

    def decode(self, ids: Sequence[int]) -> str:
        if self._piecewise:
            text = "".join(self.pieces(ids))
            if REPLACEMENT_CHAR not in text:
                return text
        return self._decode_exact([ids])[0]

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        if self._piecewise:
            return [self.decode(ids) for ids in batch]
        return self._decode_exact(batch)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """Each token decoded alone; tokens not seen before are decoded in one batch and remembered."""
        known = self._pieces
        try:
            return [known[i] for i in ids]
        except KeyError:
            missing = list({i for i in ids if i not in known})
            known.update(zip(missing, self._decode_exact([[i] for i in missing]), strict=True))
            return [known[i] for i in ids]

    def _decode_exact(self, batch: Sequence[Sequence[int]]) -> list[str]:
        if self._backend is not None:
            return self._backend.decode_batch([list(ids) for ids in batch], skip_special_tokens=False)
        return self.tokenizer.batch_decode(
            [list(ids) for ids in batch], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )


class TokenText:
    """Decoded text of a token list and the character span each token produced (for char -> token mapping).

    Fast path: one piece per token (the token decoded alone) whose concatenation is the text. Byte-level BPE splits
    multi-byte characters across tokens; such tokens decode to U+FFFD alone, so a token whose piece holds one is
    merged with the following tokens until the group decodes cleanly, and the group shares its span. If the pieces
    still do not add up to the text (a tokenizer whose decode is not piecewise), prefix decoding gives the spans.
    """

    def __init__(self, decoder: Decoder, ids: Sequence[int], text: str | None = None):
        ids = list(ids)
        self.text = decoder.decode(ids) if text is None else text
        pieces = decoder.pieces(ids)
        if pieces and all(pieces) and "".join(pieces) == self.text:
            # The common case, every token with its own non-empty text: the spans are running sums of the lengths.
            self.starts = list(itertools.accumulate(map(len, pieces[:-1]), initial=0))
            self.ends = self.starts[1:] + [len(self.text)]
            return
        if any(REPLACEMENT_CHAR in p for p in pieces) and REPLACEMENT_CHAR not in self.text:
            pieces = self._grouped_pieces(decoder, ids, pieces)
        if "".join(p for p in pieces if p is not None) == self.text:
            starts = self._starts_from_pieces(pieces)
        else:
            # A prefix ending inside a multi-byte character decodes with a trailing U+FFFD that the text does not have.
            strip = REPLACEMENT_CHAR if REPLACEMENT_CHAR not in self.text else ""
            prefix = [len(decoder.decode(ids[:k]).rstrip(strip)) for k in range(len(ids))]
            starts, running = [], 0
            for value in prefix:
                running = min(max(running, value), len(self.text))
                starts.append(running)
        # Token k covers text[starts[k]:ends[k]]; tokens of one group share it. Both lists are non-decreasing.
        self.starts = starts
        self.ends = [len(self.text)] * len(starts)
        for k in range(len(starts) - 2, -1, -1):
            self.ends[k] = self.ends[k + 1] if starts[k + 1] == starts[k] else starts[k + 1]

    @staticmethod
    def _grouped_pieces(decoder: Decoder, ids: list[int], pieces: list[str]) -> list[str | None]:
        """Pieces where the tokens of a split character are decoded together (the first carries the text)."""
        grouped: list[str | None] = []
        k = 0
        while k < len(ids):
            if REPLACEMENT_CHAR not in pieces[k]:
                grouped.append(pieces[k])
                k += 1
                continue
            end = k + 1
            text = pieces[k]
            while end < len(ids) and REPLACEMENT_CHAR in text:
                end += 1
                text = decoder.decode(ids[k:end])
            grouped.append(text)
            grouped.extend([None] * (end - k - 1))
            k = end
        return grouped

    @staticmethod
    def _starts_from_pieces(pieces: Sequence[str | None]) -> list[int]:
        """Start char of each token; a group's continuation tokens (None pieces) start where the group starts."""
        starts, pos = [], 0
        for piece in pieces:
            starts.append(starts[-1] if piece is None else pos)
            pos += len(piece or "")
        return starts

    def token_range(self, start: int, end: int) -> tuple[int, int]:
        """Half-open range of tokens whose characters overlap text[start:end]."""
        first = bisect.bisect_right(self.ends, start)
        last = bisect.bisect_left(self.starts, end)
        return first, max(first, last)


def turn_records(
    decoder: Decoder,
    traj: int,
    turn: int,
    turn_span: tuple[int, int],
    ids: Sequence[int],
    text: str,
    calls: Sequence[ParsedToolCall],
    canonical_params: Callable[[str, dict], dict | None],
    response: Callable[[], str],
) -> tuple[list[ToolCall], int]:
    """(records, invalid) for the calls parsed from assistant turn `turn` of trajectory `traj`.

    `turn_span` is the turn's half-open range of advantage columns, `ids` its tokens and `text` their exact decoding
    (`decoder.decode(ids)`), `calls` what `parse_tool_calls(text)` found. A call counts when it parsed and
    `canonical_params(name, arguments)` validates it; the others are `invalid`. `response()` gives the decoded
    environment text that followed the turn ("" when none did); it is only asked for when a call counts.
    """
    records, invalid = [], 0
    token_text = observation = None
    for call in calls:
        params = canonical_params(call.name, call.arguments) if call.ok else None
        if params is None:
            invalid += 1
            continue
        if token_text is None:
            token_text = TokenText(decoder, ids, text)
            observation = observation_text(response())
        first, last = token_text.token_range(call.start, call.end)
        records.append(
            ToolCall(
                traj=traj,
                tool=call.name,
                params=params,
                call_span=(turn_span[0] + first, turn_span[0] + last),
                turn_span=turn_span,
                turn=turn,
                observation=observation,
                succeeded=not is_error_text(observation),
            )
        )
    return records, invalid
