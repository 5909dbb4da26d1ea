"""The failure taxonomy: each kind on a hand-built case, and the order in which they are checked."""

import pytest

from openrlhf_tapo.agent.failures import FAILURE_KINDS, first_error


@pytest.mark.parametrize(
    "case, expected",
    [
        ({"succeeded": True, "answered": True, "malformed_turn": 0, "call_turns": [], "hit_turn": None}, None),
        ({"succeeded": False, "answered": True, "malformed_turn": 0, "call_turns": [1], "hit_turn": 1},
         "malformed_call"),
        # the malformed call came after the answer was in hand: the error is the answer step's
        ({"succeeded": False, "answered": True, "malformed_turn": 2, "call_turns": [0, 1], "hit_turn": 1},
         "wrong_answer"),
        ({"succeeded": False, "answered": False, "malformed_turn": None, "call_turns": [0], "hit_turn": 0},
         "no_answer"),
        ({"succeeded": False, "answered": True, "malformed_turn": None, "call_turns": [0, 1], "hit_turn": None},
         "wrong_parameters"),
        ({"succeeded": False, "answered": False, "malformed_turn": None, "call_turns": [0], "hit_turn": None},
         "wrong_parameters"),
        ({"succeeded": False, "answered": True, "malformed_turn": None, "call_turns": [], "hit_turn": None},
         "no_call"),
        ({"succeeded": False, "answered": False, "malformed_turn": None, "call_turns": [], "hit_turn": None},
         "no_answer"),
    ],
)  # fmt: skip
def test_first_error(case, expected):
    assert first_error(**case) == expected
    assert expected is None or expected in FAILURE_KINDS
