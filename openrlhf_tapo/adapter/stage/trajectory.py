"""Recover the tool calls of rollout trajectories from OpenRLHF's token tensors, for the TAPO stage.

OpenRLHF 0.11.2 keeps no turn structure on an `Experience`: a trajectory is `sequences[b]` (prompt, every assistant
turn, every tool response, right-padded) and `action_mask[b]`, which is 1 on the tokens the model generated.
`action_mask[:, j]` refers to token `sequences[:, j + 1]` (log-probs are computed for the next token), so column j of
the advantages belongs to token j + 1. From these we recover, per trajectory:

- assistant turns: the runs of 1s in `action_mask` (the agent gives every generated turn one action range, and the
  tool responses it appends between turns are masked);
- tool calls: each turn's tokens and the masked tokens after it (its tool response) go through
  `agent.call_record.turn_records`, the code the rollout executor builds its own records with: exact decoding,
  `parse_tool_calls`, character-to-token mapping, the observation, success (not the tools' error text), and the
  canonical parameters of a runner built from the run's tools config (`tools.canonicalizer`).

A call counts for TAPO when it parsed and its arguments validate; the others are counted as invalid and never
matched (their turn keeps the base advantage).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from openrlhf_tapo.agent.call_record import Decoder, turn_records
from openrlhf_tapo.agent.protocol import ending_answer, parse_tool_calls
from openrlhf_tapo.algorithms.tapo import ToolCall
from openrlhf_tapo.tools import ToolsConfig, canonicalizer


def turn_spans(action_mask: torch.Tensor) -> list[tuple[int, int]]:
    """Half-open column ranges of the runs of 1s in one row of an action mask, in order."""
    return rows_turn_spans(action_mask.reshape(1, -1))[0]


def rows_turn_spans(action_mask: torch.Tensor) -> list[list[tuple[int, int]]]:
    """`turn_spans` of every row of a (B, T) mask, with one pass of tensor operations for the whole batch."""
    padded = torch.nn.functional.pad(action_mask.to(torch.int8), (1, 1))
    edges = torch.diff(padded, dim=1)
    spans: list[list[tuple[int, int]]] = [[] for _ in range(action_mask.shape[0])]
    # nonzero lists (row, column) pairs row by row, columns ascending: the k-th start and k-th end form a run.
    starts, ends = torch.nonzero(edges == 1).tolist(), torch.nonzero(edges == -1).tolist()
    for (row, start), (_, end) in zip(starts, ends, strict=True):
        spans[row].append((start, end))
    return spans


def sequence_lengths(attention_mask: torch.Tensor | None, batch: int, width: int) -> list[int]:
    """Real (unpadded) length of each row: one past its last attended token (0 for none); `width` without a mask."""
    if attention_mask is None or width == 0:
        return [width if attention_mask is None else 0] * batch
    positions = torch.arange(1, width + 1) * (attention_mask != 0)
    return positions.max(dim=1).values.tolist()


@dataclass
class RecoveredCalls:
    """Tool calls of a batch of trajectories and per-trajectory counts (for logging)."""

    calls: list[ToolCall] = field(default_factory=list)
    valid_calls: list[int] = field(default_factory=list)  # per trajectory: calls TAPO can use
    invalid_calls: list[int] = field(default_factory=list)  # per trajectory: parse errors or invalid arguments
    spans: list[list[tuple[int, int]]] = field(default_factory=list)  # per trajectory: its assistant turns' columns

    @property
    def turns(self) -> list[int]:
        """Assistant turns per trajectory."""
        return [len(spans) for spans in self.spans]


class ToolCallRecovery:
    """Turns (sequences, action_mask, attention_mask) rows into `ToolCall`s located in advantage columns.

    `tokenizer` is the HF tokenizer or processor OpenRLHF's experience maker holds (a processor's own tokenizer is
    used for decoding); `tools` the run's tools config (the agent YAML's `tools:`; defaults when None).
    """

    def __init__(self, tokenizer, tools: ToolsConfig | None = None):
        self.decoder = Decoder(tokenizer)
        self.canonical_params = canonicalizer(tools).canonical_params

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
        batch, width = sequences.shape
        lengths = sequence_lengths(attention_mask, batch, width)
        # Turns end before the row's last real token (column j is token j + 1).
        limits = (torch.tensor(lengths, dtype=torch.long) - 1).clamp(min=0)
        in_row = torch.arange(action_mask.shape[1]) < limits[:, None]
        all_spans = rows_turn_spans(action_mask.bool() & in_row)
        all_ids = sequences.tolist()
        for b in range(batch):
            length, spans = lengths[b], all_spans[b]
            ids = all_ids[b][:length]
            # Column j <-> token j + 1, so turn (s, e) is ids[s + 1 : e + 1].
            texts = self.decoder.decode_batch([ids[s + 1 : e + 1] for s, e in spans])
            valid = invalid = 0
            for turn, ((s, e), text) in enumerate(zip(spans, texts, strict=True)):
                parsed = parse_tool_calls(text)
                if not parsed or ending_answer(text, parsed) is not None:  # an answer first: the calls never ran
                    continue
                next_start = spans[turn + 1][0] + 1 if turn + 1 < len(spans) else length
                records, bad = turn_records(
                    self.decoder,
                    first_traj + b,
                    turn,
                    (s, e),
                    ids[s + 1 : e + 1],
                    text,
                    parsed,
                    self.canonical_params,
                    functools.partial(self.decoder.decode, ids[e + 1 : next_start]),
                )
                out.calls.extend(records)
                valid += len(records)
                invalid += bad
            out.valid_calls.append(valid)
            out.invalid_calls.append(invalid)
            out.spans.append(spans)
        return out
