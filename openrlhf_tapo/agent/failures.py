"""The first error of a failing agent trajectory: which step a credit estimator would have to reach to fix it.

Five kinds, checked in this order (the first that applies is the trajectory's first error):
- `malformed_call`: a call that did not parse, or named an unknown tool, or whose arguments did not validate, came
  before any observation held the answer;
- `wrong_answer`: an observation held the answer (the label's, by the agent's answer rule) and the final answer
  was wrong: the answer step failed, a step TAPO never touches;
- `no_answer`: an observation held the answer and no answer was given (turn limit, context limit, no action);
- `wrong_parameters`: calls reached tools but no observation held the answer (a wrong query, region or tool:
  without knowing which tool can return an answer, a call of the wrong tool is counted here);
- `no_call`: no call reached a tool; the agent answered wrongly (or stopped) from what it had — except a
  trajectory that neither called nor answered, which is `no_answer`.
A successful trajectory (score >= 1, a fully correct answer) has none.
"""

from __future__ import annotations

from collections.abc import Sequence

from openrlhf_tapo.agent import protocol
from openrlhf_tapo.agent.reward import substring_match
from openrlhf_tapo.algorithms.tapo import ToolCall

FAILURE_KINDS = ("malformed_call", "wrong_answer", "no_answer", "wrong_parameters", "no_call")
# Tool errors that mean the call itself was malformed (the protocol's parse errors and the runner's refusals of a
# name or arguments), as opposed to a tool that failed or found nothing.
MALFORMED_ERRORS = frozenset(
    {protocol.BAD_JSON, protocol.BAD_CALL, protocol.UNCLOSED, "unknown_tool", "bad_arguments", "image_ref"}
)


def first_error(
    *, succeeded: bool, answered: bool, malformed_turn: int | None, call_turns: Sequence[int], hit_turn: int | None
) -> str | None:
    """The kind of a trajectory's first error (None when it succeeded).

    `malformed_turn`: the first turn with a malformed call; `call_turns`: the turns of calls that reached a tool;
    `hit_turn`: the first turn whose observation held the answer."""
    if succeeded:
        return None
    if malformed_turn is not None and (hit_turn is None or malformed_turn <= hit_turn):
        return "malformed_call"
    if hit_turn is not None:
        return "wrong_answer" if answered else "no_answer"
    if call_turns:
        return "wrong_parameters"
    return "no_call" if answered else "no_answer"


def hit_turn(calls: Sequence[ToolCall], golds: Sequence[str]) -> int | None:
    """The first turn whose call returned an observation that holds one of `golds` (the answer rule of the reward,
    `substring_match`), or None."""
    if not golds:
        return None
    hits = [c.turn for c in calls if c.succeeded and substring_match(c.observation, list(golds))]
    return min(hits, default=None)
