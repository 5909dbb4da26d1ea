"""A multi-turn search-then-answer environment with known ground truth and a tabular softmax policy.

One episode is one fresh question (its fact is drawn anew, so nothing can be memorised). Every decision is one
"token" of the policy; the columns of the token tensors are fixed:

    turn 0   col 0  MODE    answer directly | call the search tool
             col 1  FORMAT  well-formed call | malformed call                 (only after "call")
             col 2  QUERY   the right query | wrong query 1 .. Q-1            (only after a well-formed call)
    turn 1   col 3  READ    the fact | distractor 1 | distractor 2           (only after the right query's result)

Without the right result (direct answer, malformed call, wrong query) the answer is a guess among `num_answers`
candidates: correct with probability 1 / num_answers, and nothing about it can be learned. A useless tool's result
holds no fact, so reading it is such a guess too. A direct answer (no call) is also right when the model already
knows the fact (probability `p_known`; after a call the model answers from what came back, so a useless tool then
costs that knowledge). Reward: 1 for a correct answer, else 0.

Skills are shared across questions (one table each), except READ, which has one table per question type when
`reader_types > 1` (each type then learns from its own share of the samples: slow per-prompt answer skill).
A well-formed call is a `text_search` tool call whose query string is the same for every rollout of a question that
picks the same query index, so TAPO's own matcher sees equal parameters exactly where the actions are equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from openrlhf_tapo.algorithms.tapo import ToolCall

MODE, FORMAT, QUERY, READ = range(4)
NUM_COLUMNS = 4
# Random draws of one trajectory: one per decision column (0-3), then these.
DRAW_TYPE, DRAW_GUESS, DRAW_KNOWN = 4, 5, 6
NUM_DRAWS = 7
CALL_SPAN = (FORMAT, QUERY + 1)  # the call's own tokens
TURN_SPAN = (MODE, QUERY + 1)  # the whole assistant turn that made the call
READ_CHOICES = 3  # the fact and two distractors from the result page
WRONG_QUERY_WORDS = ("founder", "logo", "stock", "rival", "motto", "website", "mascot")


@dataclass(frozen=True)
class Regime:
    """Initial policy and environment of one preset; every probability is the policy's at step 0."""

    description: str
    p_call: float = 0.5  # P(MODE = call)
    p_well_formed: float = 0.9  # P(FORMAT = well-formed | call)
    p_right_query: float = 0.7  # P(QUERY = right | well-formed call)
    num_queries: int = 4  # the right query and num_queries - 1 wrong ones
    p_read_fact: float = 0.15  # P(READ = fact | the right result); the two distractors share the rest
    num_answers: int = 6  # candidates of a guess: guessing is right with probability 1 / num_answers
    tool_useful: bool = True  # False: the result holds no fact (reading it is a guess)
    p_known: float = 0.0  # P(a direct answer is known without the tool); not learnable (fresh questions)
    reader_types: int = 1  # question types, each with its own READ table

    def __post_init__(self):
        for name in ("p_call", "p_well_formed", "p_right_query", "p_read_fact"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"Regime.{name} must be in (0, 1) (a softmax policy), got {value!r}")
        if not 2 <= self.num_queries <= len(WRONG_QUERY_WORDS) + 1:
            raise ValueError(
                f"Regime.num_queries must be in [2, {len(WRONG_QUERY_WORDS) + 1}], got {self.num_queries}"
            )
        if not 0 <= self.p_known < 1:
            raise ValueError(f"Regime.p_known must be in [0, 1), got {self.p_known!r}")
        if self.num_answers < 2 or self.reader_types < 1:
            raise ValueError(f"Regime needs num_answers >= 2 and reader_types >= 1, got {self}")

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # The environment interface the trainer uses (sim/train.py `Environment`); the part-2 environments of
    # sim/multicall.py implement the same methods.
    num_columns = NUM_COLUMNS
    num_draws = NUM_DRAWS
    turn_columns = (TURN_SPAN, (READ, READ + 1))  # the call turn, then the answer read from its result

    def initial_policy(self, runs: int) -> Policy:
        return Policy.initial(self, runs)

    def rollout(self, policy: Policy, uniforms: Tensor) -> Batch:
        return rollout(policy, self, uniforms)

    def log_probs(self, policy: Policy, batch: Batch, runs: int) -> Tensor:
        return action_log_probs(policy, batch.actions, batch.mask, batch.qtype, runs)

    def tool_calls(self, batch: Batch, group_size: int) -> list[ToolCall]:
        return tool_calls(batch, group_size)

    def measures(self, policy: Policy) -> dict[str, Tensor]:
        """Per-run measures recorded on the curves (exact, at temperature 1 unless named greedy)."""
        return {
            "accuracy": expected_accuracy(policy, self),
            "greedy_accuracy": greedy_accuracy(policy, self),
            "call_rate": call_rate(policy),
        }


_BASE = "call rate 0.5, 90 % of calls well-formed, right query 70 %, fact read after the right result 15 %"
REGIMES: dict[str, Regime] = {
    # The tool is needed, but right after a good call the answer step is still weak: the call path (0.156) starts
    # below answering directly (1/6), so GRPO's expected gradient pushes calls down.
    "a_useful_weak_reader": Regime(f"useful tool, weak reader: {_BASE}"),
    # Tool use is already saturated: almost every trajectory calls, so calls cannot be pushed down much.
    "b_saturated_calls": Regime("tool use saturated: call rate 0.95, otherwise as (a)", p_call=0.95),
    # Control: the result holds no fact, and a direct answer is known 30 % of the time. The best policy never calls
    # (direct 0.42 vs 1/6 after a call); GRPO should learn that, and TAPO must not raise accuracy.
    "c_useless_tool": Regime(
        "useless tool (control): results hold no fact, direct answers known 30 %, otherwise as (a)",
        tool_useful=False,
        p_known=0.3,
    ),
    # Most calls are malformed, so most calls return an error and the call path is far below guessing.
    "d_weak_format": Regime("weak call format: 35 % of calls well-formed, otherwise as (a)", p_well_formed=0.35),
    # The answer skill is per question type (16 types): each READ table learns from 1/16 of the samples.
    "e_slow_reader": Regime("answer skill learned per question type (16 types), otherwise as (a)", reader_types=16),
}


def _logits(first: float, n: int) -> list[float]:
    """Logits of a softmax over n choices with P(choice 0) = first and the rest split evenly."""
    return [math.log(first)] + [math.log((1 - first) / (n - 1))] * (n - 1)


@dataclass
class Policy:
    """Tabular softmax policy of S independent runs (leading dimension S); each table is a leaf tensor."""

    mode: Tensor  # [S, 2]: answer, call
    format: Tensor  # [S, 2]: well-formed, malformed
    query: Tensor  # [S, Q]: right, wrong...
    read: Tensor  # [S, reader_types, 3]: fact, distractor, distractor

    @classmethod
    def initial(cls, regime: Regime, runs: int) -> Policy:
        def table(values: list[float], *shape: int) -> Tensor:
            return torch.tensor(values, dtype=torch.float64).expand(*shape, len(values)).clone().requires_grad_()

        return cls(
            mode=table([math.log(1 - regime.p_call), math.log(regime.p_call)], runs),
            format=table([math.log(regime.p_well_formed), math.log(1 - regime.p_well_formed)], runs),
            query=table(_logits(regime.p_right_query, regime.num_queries), runs),
            read=table(_logits(regime.p_read_fact, READ_CHOICES), runs, regime.reader_types),
        )

    def parameters(self) -> list[Tensor]:
        return [self.mode, self.format, self.query, self.read]


@dataclass
class Batch:
    """One step's rollouts of S runs: B trajectories each, G consecutive ones per question (rows s * B + b)."""

    actions: Tensor  # [S*B, 4] long: the choice in each column (0 where the column is not acted)
    mask: Tensor  # [S*B, 4] bool: columns the policy acted in
    qtype: Tensor  # [S*B] long: the question type (row of the READ table)
    reward: Tensor  # [S*B] float64: 1 correct, 0 wrong
    old_log_probs: Tensor  # [S*B, 4] float64: log-probabilities of the actions under the rollout policy


def _choose(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF sampling: index of the first cumulative probability above u (probs [..., n], u [...])."""
    cdf = probs.cumsum(-1)[..., :-1]
    return (u.unsqueeze(-1) > cdf).sum(-1)


def action_log_probs(policy: Policy, actions: Tensor, mask: Tensor, qtype: Tensor, runs: int) -> Tensor:
    """log pi(action) per column [S*B, 4] (0 where the column is masked); differentiable in the policy tables."""
    rows = actions.shape[0] // runs

    def column(table: Tensor, col: int) -> Tensor:
        logp = torch.log_softmax(table, -1).repeat_interleave(rows, 0)  # [S*B, n]
        return logp.gather(-1, actions[:, col : col + 1]).squeeze(-1)

    read = torch.log_softmax(policy.read, -1).repeat_interleave(rows, 0)  # [S*B, types, 3]
    read = read[torch.arange(actions.shape[0]), qtype].gather(-1, actions[:, READ : READ + 1]).squeeze(-1)
    out = torch.stack([column(policy.mode, MODE), column(policy.format, FORMAT), column(policy.query, QUERY), read], 1)
    return torch.where(mask, out, torch.zeros_like(out))


@torch.no_grad()
def rollout(policy: Policy, regime: Regime, uniforms: Tensor) -> Batch:
    """Sample one step's trajectories from `uniforms` [S, B, NUM_DRAWS] in [0, 1) (the DRAW_* columns).

    Every random draw comes from `uniforms`, so a run's trajectories depend only on its own random stream.
    """
    runs, per_run, _ = uniforms.shape
    u = uniforms.reshape(runs * per_run, -1).double()

    def probs(table: Tensor) -> Tensor:
        return torch.softmax(table, -1).repeat_interleave(per_run, 0)

    qtype = (u[:, DRAW_TYPE] * regime.reader_types).long().clamp(max=regime.reader_types - 1)
    mode = _choose(probs(policy.mode), u[:, MODE])
    fmt = _choose(probs(policy.format), u[:, FORMAT])
    query = _choose(probs(policy.query), u[:, QUERY])
    read_probs = probs(policy.read)[torch.arange(runs * per_run), qtype]
    read = _choose(read_probs, u[:, READ])

    called = mode == 1
    well = called & (fmt == 0)
    right = well & (query == 0)
    mask = torch.stack([torch.ones_like(called), called, well, right], 1)
    actions = torch.stack([mode, fmt, query, read], 1) * mask

    guess = u[:, DRAW_GUESS] < 1.0 / regime.num_answers
    known = ~called & (u[:, DRAW_KNOWN] < regime.p_known)
    reads_fact = right & (read == 0) if regime.tool_useful else torch.zeros_like(right)
    # A guess decides every trajectory that did not read a useful result (and, with a useless tool, every one).
    decided_by_reading = right if regime.tool_useful else torch.zeros_like(right)
    reward = torch.where(decided_by_reading, reads_fact, guess | known).double()
    old = action_log_probs(policy, actions, mask, qtype, runs)
    return Batch(actions=actions, mask=mask, qtype=qtype, reward=reward, old_log_probs=old)


def query_text(question: int, query: int) -> str:
    """The search query string of query index `query` for question `question` (0 = the right query)."""
    if query == 0:
        return f"headquarters city of organisation q{question}"
    return f"{WRONG_QUERY_WORDS[query - 1]} of organisation q{question}"


def tool_calls(batch: Batch, group_size: int) -> list[ToolCall]:
    """The well-formed calls of a batch as TAPO sees them (a malformed call cannot be parsed, so it has no entry).

    Rows of one question share its query strings (question id = row // group_size), so equal query indices give
    equal parameters.
    """
    rows = batch.mask[:, QUERY].nonzero().squeeze(-1).tolist()
    queries = batch.actions[:, QUERY].tolist()
    return [
        ToolCall(
            traj=row,
            tool="text_search",
            params={"query": query_text(row // group_size, queries[row])},
            call_span=CALL_SPAN,
            turn_span=TURN_SPAN,
            turn=0,
        )
        for row in rows
    ]


@torch.no_grad()
def expected_accuracy(policy: Policy, regime: Regime) -> Tensor:
    """Exact P(correct) per run [S] at temperature 1 (question types equally likely)."""
    guess = 1.0 / regime.num_answers
    p_call = torch.softmax(policy.mode, -1)[:, 1]
    p_well = torch.softmax(policy.format, -1)[:, 0]
    p_right = torch.softmax(policy.query, -1)[:, 0]
    reading = torch.softmax(policy.read, -1)[..., 0].mean(-1) if regime.tool_useful else torch.full_like(p_call, guess)
    after_call = p_well * (p_right * reading + (1 - p_right) * guess) + (1 - p_well) * guess
    direct = regime.p_known + (1 - regime.p_known) * guess
    return (1 - p_call) * direct + p_call * after_call


@torch.no_grad()
def greedy_accuracy(policy: Policy, regime: Regime) -> Tensor:
    """P(correct) per run [S] when every decision takes the most likely choice (the guess stays random)."""
    runs, g = policy.mode.shape[0], 1.0 / regime.num_answers
    guess = torch.full((runs,), g, dtype=torch.float64)
    direct = torch.full((runs,), regime.p_known + (1 - regime.p_known) * g, dtype=torch.float64)
    reads = (policy.read.argmax(-1) == 0).double().mean(-1) if regime.tool_useful else guess
    calls = policy.mode.argmax(-1) == 1
    right_call = calls & (policy.format.argmax(-1) == 0) & (policy.query.argmax(-1) == 0)
    return torch.where(right_call, reads, torch.where(calls, guess, direct))


@torch.no_grad()
def call_rate(policy: Policy) -> Tensor:
    """P(MODE = call) per run [S]: the tool-call rate at temperature 1."""
    return torch.softmax(policy.mode, -1)[:, 1]
