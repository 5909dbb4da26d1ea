"""Part 2 of the mechanism study: environments with two calls per trajectory, where equal parameters need not be
equal actions (docs/results.md §1, part 2).

One episode is one fresh question; every decision is one "token" of a tabular softmax policy, in fixed columns:

    turn 0   col 0  MODE    answer directly | call the search tool (call 1, a `text_search`)
             col 1  QUERY   the right query | wrong query 1 .. Q-1            (after "call")
    turn 1   col 2  MORE    answer now | make a second call (call 2)          (after call 1)
             col 3  SECOND  what call 2 is (two_hop / state_dependent only)   (after "second call")
    turn 2   col 4  READ    the fact | distractor 1 | distractor 2            (only when the fact came back)

Without the fact the answer is a guess (1 / num_answers). Reward 1 for a correct answer, else 0. The kinds:

- `two_hop`: call 1's right query returns a bridge entity; call 2 is a search whose query names the entity call 1
  returned (SECOND 0) or asks something else (SECOND 1 ..); the fact comes back only after the right call 1 and the
  hop-2 query. A failing trajectory can hold one right call and one wrong one. Equal parameters are equal actions.
- `state_dependent`: call 2 is `open_page(rank)` (SECOND 0: rank 1, 1: rank 2) on call 1's result list. The
  environment draws a state per trajectory, visible to the policy (SECOND has one table per state): with probability
  `spurious_share` the fact's page is ranked 2nd (state 1), else 1st. `open_page(rank=1)` is the fact in state 0 and
  worthless in state 1: the same parameters, different value. A failing trajectory that opened rank 1 in state 1
  matches a successful sibling that opened rank 1 in state 0 (a spurious witness); its page differs from the
  witness's (outcome verification can see it), its turn does not (the turn window cannot).
- `redundant`: call 2 repeats call 1's query verbatim (no SECOND decision): it adds nothing, and equals a witness's
  call 1 in everything but its turn. The fact comes back with the right call 1 alone. The call-inflation case.

Each call is marked informative or not by the truth of its own state (`informative`): call 1 when its query was
the right one; call 2 when it returned the fact (two_hop, state_dependent); a repeat never. TAPO credit on an
uninformative call is a spurious match, and the trainer counts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from openrlhf_tapo.algorithms.tapo import ToolCall
from openrlhf_tapo.sim.env import READ_CHOICES, WRONG_QUERY_WORDS, _choose, _logits, query_text

MODE, QUERY, MORE, SECOND, READ = range(5)
NUM_COLUMNS = 5
DRAW_STATE, DRAW_GUESS = 5, 6  # after one draw per decision column
NUM_DRAWS = 7
KINDS = ("two_hop", "state_dependent", "redundant")
CALL1_TURN, CALL2_TURN = (MODE, QUERY + 1), (MORE, SECOND + 1)  # half-open column ranges of the two call turns


@dataclass(frozen=True)
class MultiCallRegime:
    """Initial policy and environment of one part-2 preset; every probability is the policy's at step 0."""

    description: str
    kind: str
    p_call: float = 0.5  # P(MODE = call)
    p_right_query: float = 0.7  # P(QUERY = right)
    num_queries: int = 4  # the right query and num_queries - 1 wrong ones
    p_second: float = 0.5  # P(MORE = second call | call 1)
    p_second_right: float = 0.5  # P(SECOND = 0): the hop-2 query (two_hop) / rank 1 in every state (state_dependent)
    num_second: int = 2  # choices of SECOND (two_hop: the hop-2 query and num_second - 1 others; state_dependent: 2)
    spurious_share: float = 0.0  # state_dependent: P(state 1), where open_page(rank=1) is worthless
    p_read_fact: float = 0.15  # P(READ = fact | the fact came back)
    num_answers: int = 6  # candidates of a guess

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"MultiCallRegime.kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("p_call", "p_right_query", "p_second", "p_second_right", "p_read_fact"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"MultiCallRegime.{name} must be in (0, 1) (a softmax policy), got {self}")
        if not 2 <= self.num_queries <= len(WRONG_QUERY_WORDS) + 1 or not 2 <= self.num_second <= self.num_queries:
            raise ValueError(f"MultiCallRegime needs 2 <= num_second <= num_queries <= 8, got {self}")
        if self.kind == "state_dependent" and (self.num_second != 2 or not 0 <= self.spurious_share < 1):
            raise ValueError(f"state_dependent needs num_second = 2 and spurious_share in [0, 1), got {self}")
        if self.kind != "state_dependent" and self.spurious_share:
            raise ValueError(f"spurious_share is a state_dependent knob, got {self.spurious_share} for {self.kind}")
        if self.num_answers < 2:
            raise ValueError(f"MultiCallRegime.num_answers must be >= 2, got {self.num_answers}")

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def states(self) -> int:
        return 2 if self.kind == "state_dependent" else 1

    # The trainer's Environment interface (sim/train.py).
    num_columns = NUM_COLUMNS
    num_draws = NUM_DRAWS
    turn_columns = (CALL1_TURN, CALL2_TURN, (READ, READ + 1))  # call 1, the second call (or not), the answer

    def initial_policy(self, runs: int) -> MultiCallPolicy:
        return MultiCallPolicy.initial(self, runs)

    def rollout(self, policy: MultiCallPolicy, uniforms: Tensor) -> MultiCallBatch:
        return rollout(policy, self, uniforms)

    def log_probs(self, policy: MultiCallPolicy, batch: MultiCallBatch, runs: int) -> Tensor:
        return action_log_probs(policy, batch.actions, batch.mask, batch.state, runs)

    def tool_calls(self, batch: MultiCallBatch, group_size: int) -> list[ToolCall]:
        return tool_calls(batch, self, group_size)

    def informative(self, batch: MultiCallBatch, calls) -> list[bool]:
        return informative(batch, self, calls)

    def measures(self, policy: MultiCallPolicy) -> dict[str, Tensor]:
        probs = policy.probabilities()
        return {
            "accuracy": accuracy(probs, self),
            "greedy_accuracy": accuracy(policy.probabilities(greedy=True), self),
            "call_rate": probs["mode"][:, 1],
            "calls_per_trajectory": probs["mode"][:, 1] * (1 + probs["more"][:, 1]),
        }


# Chosen on GRPO alone, before any part-2 TAPO run, so that GRPO learns the fact path within 150 steps at the
# study's lr 0.2 (two_hop: 0.41 at step 100, 0.66 at 150; state_dependent: 0.22 / 0.36; 10 seeds). In every regime
# the reader starts at 15 % (below a guess, 1/6), so, as in part 1's (a), the call path starts below answering
# directly and GRPO's expected gradient first pushes the calls down.
_CHAIN = dict(p_right_query=0.8, p_second=0.8)
REGIMES: dict[str, MultiCallRegime] = {
    # The fact needs both hops (P = 0.8 x 0.8 x 0.8 at step 0).
    "f_two_hop": MultiCallRegime(
        "two hops: call rate 0.5, right query 80 %, second call 80 %, hop-2 query 80 % of 2, fact read 15 %",
        "two_hop",
        p_second_right=0.8,
        **_CHAIN,
    ),
    # open_page(rank=1) is worthless in half the trajectories (state 1) and the fact in the other half; the policy
    # starts opening rank 1 70 % of the time in both states.
    "g_state_dependent": MultiCallRegime(
        "state-dependent open_page: as f, rank 1 opened 70 % in both states, worthless in 50 % of the states",
        "state_dependent",
        p_second_right=0.7,
        spurious_share=0.5,
        **_CHAIN,
    ),
    # The same with the worthless state rarer: the spurious-match knob at a second value.
    "g_state_dependent_s0.2": MultiCallRegime(
        "state-dependent open_page: as g, rank 1 worthless in 20 % of the states",
        "state_dependent",
        p_second_right=0.7,
        spurious_share=0.2,
        **_CHAIN,
    ),
    # The second call repeats the first and changes nothing: accuracy is part 1's (a) without malformed calls.
    "h_redundant": MultiCallRegime(
        "redundant repeat: call rate 0.5, right query 70 %, a repeat of call 1 50 %, fact read 15 %", "redundant"
    ),
}


@dataclass
class MultiCallPolicy:
    """Tabular softmax policy of S independent runs (leading dimension S); each table is a leaf tensor."""

    mode: Tensor  # [S, 2]: answer, call
    query: Tensor  # [S, Q]: right, wrong...
    more: Tensor  # [S, 2]: answer now, second call
    second: Tensor  # [S, states, num_second]: one table per state the policy sees
    read: Tensor  # [S, 3]: fact, distractor, distractor

    @classmethod
    def initial(cls, regime: MultiCallRegime, runs: int) -> MultiCallPolicy:
        def table(values: list[float], *shape: int) -> Tensor:
            return torch.tensor(values, dtype=torch.float64).expand(*shape, len(values)).clone().requires_grad_()

        return cls(
            mode=table([math.log(1 - regime.p_call), math.log(regime.p_call)], runs),
            query=table(_logits(regime.p_right_query, regime.num_queries), runs),
            more=table([math.log(1 - regime.p_second), math.log(regime.p_second)], runs),
            second=table(_logits(regime.p_second_right, regime.num_second), runs, regime.states),
            read=table(_logits(regime.p_read_fact, READ_CHOICES), runs),
        )

    def parameters(self) -> list[Tensor]:
        return [self.mode, self.query, self.more, self.second, self.read]

    @torch.no_grad()
    def probabilities(self, greedy: bool = False) -> dict[str, Tensor]:
        """Each table's probabilities; `greedy` puts probability 1 on its most likely choice."""
        out = {}
        for name in ("mode", "query", "more", "second", "read"):
            table = getattr(self, name)
            if greedy:
                out[name] = torch.nn.functional.one_hot(table.argmax(-1), table.shape[-1]).double()
            else:
                out[name] = torch.softmax(table, -1)
        return out


@dataclass
class MultiCallBatch:
    """One step's rollouts of S runs: B trajectories each, G consecutive ones per question (rows s * B + b)."""

    actions: Tensor  # [S*B, 5] long: the choice in each column (0 where the column is not acted)
    mask: Tensor  # [S*B, 5] bool: columns the policy acted in
    state: Tensor  # [S*B] long: the state SECOND sees (0 except in state_dependent)
    fact: Tensor  # [S*B] bool: the fact came back
    reward: Tensor  # [S*B] float64
    old_log_probs: Tensor  # [S*B, 5] float64


def action_log_probs(policy: MultiCallPolicy, actions: Tensor, mask: Tensor, state: Tensor, runs: int) -> Tensor:
    """log pi(action) per column [S*B, 5] (0 where the column is masked); differentiable in the policy tables."""
    rows = actions.shape[0] // runs

    def column(table: Tensor, col: int) -> Tensor:
        logp = torch.log_softmax(table, -1).repeat_interleave(rows, 0)
        return logp.gather(-1, actions[:, col : col + 1]).squeeze(-1)

    second = torch.log_softmax(policy.second, -1).repeat_interleave(rows, 0)[torch.arange(len(actions)), state]
    second = second.gather(-1, actions[:, SECOND : SECOND + 1]).squeeze(-1)
    out = torch.stack(
        [
            column(policy.mode, MODE),
            column(policy.query, QUERY),
            column(policy.more, MORE),
            second,
            column(policy.read, READ),
        ],
        1,
    )
    return torch.where(mask, out, torch.zeros_like(out))


@torch.no_grad()
def rollout(policy: MultiCallPolicy, regime: MultiCallRegime, uniforms: Tensor) -> MultiCallBatch:
    """Sample one step's trajectories from `uniforms` [S, B, NUM_DRAWS] in [0, 1) (every random draw comes from it)."""
    runs, per_run, _ = uniforms.shape
    n = runs * per_run
    u = uniforms.reshape(n, -1).double()

    def choose(table: Tensor, col: int) -> Tensor:
        return _choose(torch.softmax(table, -1).repeat_interleave(per_run, 0), u[:, col])

    state = (u[:, DRAW_STATE] < regime.spurious_share).long()  # always 0 outside state_dependent (share 0)
    mode, query, more = choose(policy.mode, MODE), choose(policy.query, QUERY), choose(policy.more, MORE)
    second_probs = torch.softmax(policy.second, -1).repeat_interleave(per_run, 0)[torch.arange(n), state]
    second, read = _choose(second_probs, u[:, SECOND]), choose(policy.read, READ)

    called = mode == 1
    right = called & (query == 0)
    again = called & (more == 1)
    if regime.kind == "two_hop":
        fact = right & again & (second == 0)
    elif regime.kind == "state_dependent":
        fact = right & again & (second == state)  # SECOND k opens rank k + 1; the fact is at rank state + 1
    else:
        fact = right
    has_second = again if regime.kind != "redundant" else torch.zeros_like(again)
    mask = torch.stack([torch.ones_like(called), called, called, has_second, fact], 1)
    actions = torch.stack([mode, query, more, second, read], 1) * mask
    guess = u[:, DRAW_GUESS] < 1.0 / regime.num_answers
    reward = torch.where(fact, read == 0, guess).double()
    old = action_log_probs(policy, actions, mask, state, runs)
    return MultiCallBatch(actions=actions, mask=mask, state=state, fact=fact, reward=reward, old_log_probs=old)


@torch.no_grad()
def accuracy(probs: dict[str, Tensor], regime: MultiCallRegime) -> Tensor:
    """Exact P(correct) per run [S] under the given table probabilities (MultiCallPolicy.probabilities)."""
    guess = 1.0 / regime.num_answers
    p_call, p_right = probs["mode"][:, 1], probs["query"][:, 0]
    p_more, reading = probs["more"][:, 1], probs["read"][:, 0]
    if regime.kind == "two_hop":
        p_fact = p_right * p_more * probs["second"][:, 0, 0]
    elif regime.kind == "state_dependent":  # open the rank holding the fact: rank 1 in state 0, rank 2 in state 1
        s = regime.spurious_share
        p_fact = p_right * p_more * ((1 - s) * probs["second"][:, 0, 0] + s * probs["second"][:, 1, 1])
    else:
        p_fact = p_right
    return (1 - p_call) * guess + p_call * (p_fact * reading + (1 - p_fact) * guess)


def _entity(question: int, query: int) -> str:
    """The entity named by call 1's result in two_hop (the bridge after the right query, another one otherwise)."""
    return f"founder f{question}" if query == 0 else f"{WRONG_QUERY_WORDS[query - 1]} person of q{question}"


def _calls_of_row(row: int, question: int, acts: list[int], state: int, fact: bool, regime: MultiCallRegime):
    """The ToolCalls of one trajectory: call 1 (turn 0) and, if made, call 2 (turn 1), with their observations."""
    _, query, more, second, _ = acts
    if regime.kind == "two_hop":
        q1 = f"who founded organisation q{question}" if query == 0 else query_text(question, query)
        obs1 = f"organisation q{question} was founded by {_entity(question, query)}"
    else:
        q1 = query_text(question, query)
        if query == 0:
            pages = [f"headquarters of organisation q{question}", f"news about organisation q{question}"]
            obs1 = " ".join(f"{k + 1}. {p}" for k, p in enumerate(pages if state == 0 else pages[::-1]))
        else:
            obs1 = f"1. {WRONG_QUERY_WORDS[query - 1]} of organisation q{question} 2. unrelated page"
    calls = [ToolCall(row, "text_search", {"query": q1}, (QUERY, QUERY + 1), CALL1_TURN, 0, obs1)]
    if more != 1:
        return calls
    fact_page = f"organisation q{question} has its headquarters in city c{question}"
    if regime.kind == "two_hop":
        entity = _entity(question, query)
        q2 = f"headquarters city of {entity}" if second == 0 else f"{WRONG_QUERY_WORDS[second - 1]} of {entity}"
        obs2 = fact_page if fact else f"a page about {q2}"
        calls.append(ToolCall(row, "text_search", {"query": q2}, (SECOND, SECOND + 1), CALL2_TURN, 1, obs2))
    elif regime.kind == "state_dependent":
        if fact:
            obs2 = fact_page
        elif query == 0:
            obs2 = f"news: organisation q{question} opened an office in town d{question}"
        else:
            obs2 = f"unrelated page {second + 1} for {q1}"
        calls.append(ToolCall(row, "open_page", {"rank": second + 1}, (SECOND, SECOND + 1), CALL2_TURN, 1, obs2))
    else:  # the repeat: the same query and the same result, one turn later
        calls.append(ToolCall(row, "text_search", {"query": q1}, (MORE, MORE + 1), (MORE, MORE + 1), 1, obs1))
    return calls


def tool_calls(batch: MultiCallBatch, regime: MultiCallRegime, group_size: int) -> list[ToolCall]:
    """Every call of a batch as TAPO sees it; rows of one question (row // group_size) share its strings."""
    actions, states, facts = batch.actions.tolist(), batch.state.tolist(), batch.fact.tolist()
    calls = []
    for row in batch.mask[:, QUERY].nonzero().squeeze(-1).tolist():
        calls += _calls_of_row(row, row // group_size, actions[row], states[row], facts[row], regime)
    return calls


def informative(batch: MultiCallBatch, regime: MultiCallRegime, calls) -> list[bool]:
    """Whether each call brought information the answer needs, in its own trajectory's state (the truth)."""
    actions, facts = batch.actions.tolist(), batch.fact.tolist()
    out = []
    for call in calls:
        if call.turn == 0:
            out.append(actions[call.traj][QUERY] == 0)
        else:  # call 2: the fact (two_hop, state_dependent); a repeat never
            out.append(regime.kind != "redundant" and facts[call.traj])
    return out
