"""Recover the tool calls of rollout trajectories from OpenRLHF's token tensors, for the TAPO stage.

OpenRLHF 0.11.2 keeps no turn structure on an `Experience`: a trajectory is `sequences[b]` (prompt, every assistant
turn, every tool response, right-padded) and `action_mask[b]`, which is 1 on the tokens the model generated.
`action_mask[:, j]` refers to token `sequences[:, j + 1]` (log-probs are computed for the next token), so column j of
the advantages belongs to token j + 1. From these we recover, per trajectory:

- assistant turns: the runs of 1s in `action_mask` (the agent gives every generated turn one action range, and the
  tool responses it appends between turns are masked);
- tool calls: each turn's tokens decoded (special tokens kept, no clean-up, so the text is exactly what the model
  wrote), parsed by `agent.protocol.parse_tool_calls` (the parser the rollout executor uses), and the call's
  character span mapped back to the token columns that produced it;
- observations: the masked tokens between a turn and the next assistant turn, decoded; the text inside
  `<tool_response>...</tool_response>` with the vision placeholders removed.

A call counts for TAPO when it parsed and its arguments validate (`tools.canonical_params`); the others are counted
as invalid and never matched (their turn keeps the base advantage).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from openrlhf_tapo.agent.protocol import (
    IMAGE_PAD,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    VISION_END,
    VISION_START,
    parse_tool_calls,
)
from openrlhf_tapo.algorithms.tapo import ToolCall
from openrlhf_tapo.tools import canonical_params

REPLACEMENT_CHAR = "\ufffd"
_VISION_BLOCK = re.compile(re.escape(VISION_START) + f"(?:{re.escape(IMAGE_PAD)})*" + re.escape(VISION_END))
_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")


def turn_spans(action_mask: torch.Tensor) -> list[tuple[int, int]]:
    """Half-open column ranges of the runs of 1s in one row of an action mask, in order."""
    mask = action_mask.to(torch.int8).flatten()
    if mask.numel() == 0:
        return []
    padded = torch.cat([mask.new_zeros(1), mask, mask.new_zeros(1)])
    edges = torch.diff(padded)
    starts = torch.nonzero(edges == 1).flatten().tolist()
    ends = torch.nonzero(edges == -1).flatten().tolist()
    return list(zip(starts, ends, strict=True))


def sequence_length(attention_mask: torch.Tensor | None, width: int) -> int:
    """Real (unpadded) length of one row: one past the last attended token; `width` without a mask."""
    if attention_mask is None:
        return width
    nonzero = torch.nonzero(attention_mask.flatten()).flatten()
    return int(nonzero[-1]) + 1 if nonzero.numel() else 0


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
    """

    def __init__(self, tokenizer):
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self._backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._pieces: dict[int, str] = {}  # token id -> its text decoded alone (bounded by the vocabulary)

    def decode(self, ids: Sequence[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(list(ids), skip_special_tokens=False)
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """Each token decoded alone; tokens not seen before are decoded in one batch and remembered."""
        missing = list({i for i in ids if i not in self._pieces})
        if missing:
            self._pieces.update(zip(missing, self.decode_batch([[i] for i in missing]), strict=True))
        return [self._pieces[i] for i in ids]

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
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


@dataclass
class RecoveredCalls:
    """Tool calls of a batch of trajectories and per-trajectory counts (for logging)."""

    calls: list[ToolCall] = field(default_factory=list)
    valid_calls: list[int] = field(default_factory=list)  # per trajectory: calls TAPO can use
    invalid_calls: list[int] = field(default_factory=list)  # per trajectory: parse errors or invalid arguments
    turns: list[int] = field(default_factory=list)  # per trajectory: assistant turns


class ToolCallRecovery:
    """Turns (sequences, action_mask, attention_mask) rows into `ToolCall`s located in advantage columns.

    `tokenizer` is the HF tokenizer or processor OpenRLHF's experience maker holds (a processor's own tokenizer is
    used for decoding).
    """

    def __init__(self, tokenizer):
        self.decoder = Decoder(tokenizer)

    def recover(
        self,
        sequences: torch.Tensor,
        action_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        first_traj: int = 0,
        out: RecoveredCalls | None = None,
    ) -> RecoveredCalls:
        """Calls of rows `b` of a (B, T) batch, numbered as trajectories `first_traj + b`; appended to `out`."""
        out = RecoveredCalls() if out is None else out
        for b in range(sequences.shape[0]):
            length = sequence_length(None if attention_mask is None else attention_mask[b], sequences.shape[1])
            ids = sequences[b, :length].tolist()
            spans = turn_spans(action_mask[b, : max(length - 1, 0)])
            # Column j <-> token j + 1, so turn (s, e) is ids[s + 1 : e + 1].
            texts = self.decoder.decode_batch([ids[s + 1 : e + 1] for s, e in spans])
            valid = invalid = 0
            for turn, ((s, e), text) in enumerate(zip(spans, texts, strict=True)):
                parsed = parse_tool_calls(text)
                if not parsed:
                    continue
                token_text = None
                observation = None
                for call in parsed:
                    params = canonical_params(call.name, call.arguments) if call.ok else None
                    if params is None:
                        invalid += 1
                        continue
                    if token_text is None:
                        token_text = TokenText(self.decoder, ids[s + 1 : e + 1], text)
                        next_start = spans[turn + 1][0] + 1 if turn + 1 < len(spans) else length
                        observation = observation_text(self.decoder.decode(ids[e + 1 : next_start]))
                    first, last = token_text.token_range(call.start, call.end)
                    out.calls.append(
                        ToolCall(
                            traj=first_traj + b,
                            tool=call.name,
                            params=params,
                            call_span=(s + first, s + last),
                            turn_span=(s, e),
                            turn=turn,
                            observation=observation,
                        )
                    )
                    valid += 1
            out.valid_calls.append(valid)
            out.invalid_calls.append(invalid)
            out.turns.append(len(spans))
        return out
