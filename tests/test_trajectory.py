"""Tool calls recovered from REAL OpenRLHF experiences built from tokenised multi-turn rollouts."""

from types import SimpleNamespace

import pytest
import torch
from _tapo_rollouts import call, decode_columns, experiences, response, rows, tokenizer

from openrlhf_tapo.adapter.stage.trajectory import ToolCallRecovery, turn_spans
from openrlhf_tapo.agent.call_record import Decoder, TokenText, observation_text

EIFFEL = call("text_search", '{"query": "Eiffel  tower height"}')
ZOOM = call("zoom", '{"image": "img_0", "bbox": [100, 100, 500, 600]}')


def _maker(micro_batch_size=2):
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    args = SimpleNamespace(
        algo=SimpleNamespace(advantage=SimpleNamespace(estimator="group_norm")),
        train=SimpleNamespace(dynamic_batch_enable=False),
        rollout=SimpleNamespace(micro_batch_size=micro_batch_size),
    )
    return RemoteExperienceMaker(None, None, None, None, None, SimpleNamespace(args=args), tokenizer=tokenizer())


def test_turn_spans_are_runs_of_ones():
    mask = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 1, 1])
    assert turn_spans(mask) == [(1, 3), (5, 6), (7, 10)]
    assert turn_spans(torch.zeros(4)) == []
    assert turn_spans(torch.ones(3)) == [(0, 3)]


class PythonSideTokenizer:
    """A tokenizer without a Rust backend: the Decoder must use its decode / batch_decode."""

    def __init__(self, tok):
        self.decode, self.batch_decode = tok.decode, tok.batch_decode


class NonPiecewiseTokenizer(PythonSideTokenizer):
    """Single tokens decode without their leading space (as SentencePiece tokenizers do): pieces do not add up."""

    def __init__(self, tok):
        super().__init__(tok)
        self.batch_decode = lambda batch, **kw: [tok.decode(ids, **kw).lstrip() for ids in batch]


@pytest.mark.parametrize("wrap", [None, PythonSideTokenizer, NonPiecewiseTokenizer])
@pytest.mark.parametrize("text", ["plain ascii " + EIFFEL, "Je cherche 北京 café… " + EIFFEL + " ünd", "ß" + ZOOM])
def test_token_text_maps_call_characters_to_its_tokens(text, wrap):
    tok = tokenizer()
    ids = tok.encode(text, add_special_tokens=False)
    mapped = TokenText(Decoder(tok if wrap is None else wrap(tok)), ids)
    assert mapped.text == text
    start = text.index("<tool_call>")
    end = text.index("</tool_call>") + len("</tool_call>")
    first, last = mapped.token_range(start, end)
    assert tok.decode(ids[first:last]) == text[start:end]
    # The tokens just outside the range are not part of the call.
    assert tok.decode(ids[first - 1 : last]) != text[start:end]
    if last < len(ids):
        assert tok.decode(ids[first : last + 1]) != text[start:end]


def test_non_ascii_text_is_split_inside_characters():
    # Guard for the test above: the tokenizer really splits these characters across tokens (the hard case).
    tok = tokenizer()
    pieces = tok.batch_decode([[i] for i in tok.encode("北京", add_special_tokens=False)])
    assert any("\ufffd" in p for p in pieces)


def test_observation_text_keeps_the_tool_response_only():
    decoded = (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n1. [img_1] <|vision_start|><|image_pad|><|image_pad|>"
        "<|vision_end|> Paella - Wikipedia\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    assert observation_text(decoded) == "1. [img_1]  Paella - Wikipedia"
    assert observation_text("<|im_start|>user\ncut off by the limit") == "user\ncut off by the limit"


def test_recovery_on_openrlhf_experiences():
    responses = [
        # two calls over three turns, the first after non-ASCII reasoning
        response([("Je cherche 北京. " + EIFFEL, "The Eiffel Tower is 330 m tall."), (ZOOM, "[img_1] zoomed"),
                  ("<answer>330 m</answer>", None)], 1.0),
        # no call
        response([("<answer>300 m</answer>", None)], 0.0),
        # a call whose arguments do not validate, and an unclosed one cut by the length limit
        response([(call("text_search", "{}"), "Error (bad_arguments): query is required"),
                  ('<tool_call>{"name": "zoom"', None)], 0.0),
    ]  # fmt: skip
    batches = experiences(_maker(micro_batch_size=2), responses)
    assert [b.sequences.shape[0] for b in batches] == [2, 1]

    recovered = ToolCallRecovery(tokenizer())
    out = None
    first = 0
    for exp in batches:
        out = recovered.recover(exp.sequences, exp.action_mask, exp.attention_mask, first_traj=first, out=out)
        first += exp.sequences.shape[0]
    assert out.valid_calls == [2, 0, 0]
    assert out.invalid_calls == [0, 0, 2]
    assert out.turns == [3, 1, 2]

    search, zoom = out.calls
    exp, row = rows(batches)[0]
    assert (search.traj, search.tool, dict(search.params), search.turn) == (
        0,
        "text_search",
        {"query": "Eiffel tower height"},
        0,
    )
    assert (zoom.traj, zoom.tool, zoom.turn) == (0, "zoom", 1)
    assert dict(zoom.params) == {"image": "img_0", "bbox": [100, 100, 500, 600]}
    # Column j is token j + 1: the call span decodes to exactly the call, the turn span to the whole turn.
    assert decode_columns(exp, row, *search.call_span) == EIFFEL
    assert decode_columns(exp, row, *search.turn_span) == "Je cherche 北京. " + EIFFEL
    assert decode_columns(exp, row, *zoom.call_span) == ZOOM
    assert decode_columns(exp, row, *zoom.turn_span) == ZOOM
    # Turn spans are exactly the action-mask runs, and the call lies inside its turn.
    assert turn_spans(exp.action_mask[row])[:2] == [search.turn_span, zoom.turn_span]
    assert search.turn_span[0] <= search.call_span[0] < search.call_span[1] == search.turn_span[1]
    assert search.observation == "The Eiffel Tower is 330 m tall."
    assert zoom.observation == "[img_1] zoomed"  # the placeholder format_tool_response added is gone
