"""Answer reward: rule-based matching after SQuAD-style normalisation, MMSearch-R1's weighting, an optional LLM judge.

- `normalize_answer`: `algorithms.similarity.normalize_text` (NFKC, lower-case, drop punctuation and the articles
  a/an/the, collapse whitespace; SQuAD v1.1 plus Unicode), the same rule as TAPO's query keys.
- Golds are the ground truth plus the candidate answers (aliases, when `use_candidates`).
- `exact`: the normalised prediction equals a normalised gold. `substring`: a normalised gold occurs in the
  normalised prediction on word boundaries (the "contains the answer" check of Search-R1-style evaluations; the
  other direction would count a one-word fragment of a long gold as correct). `f1`: SQuAD token F1, max over golds.
- reward = accuracy_weight * correct * P + format_weight * format_ok, P = 1 - search_penalty when correct and a
  search tool was used. Defaults: MMSearch-R1's 0.9 * EM * P + 0.1 * format with P = 0.9. Both reward and score
  are in 0-1; score is `correct` (the F1 value itself in "f1" mode).
- Judge (optional): any OpenAI-compatible chat-completions endpoint decides correctness, for every answer
  ("always") or only for answers the rules call wrong ("fallback"). A judge failure falls back to the rules and is
  counted, never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass

import aiohttp

from openrlhf_tapo.agent.config import JudgeConfig, RewardConfig
from openrlhf_tapo.algorithms.similarity import normalize_text

logger = logging.getLogger(__name__)

# One normaliser for answers and TAPO's query keys: an answer is matched by the same rule as a query.
normalize_answer = normalize_text


@dataclass(frozen=True)
class Label:
    """What a trajectory is scored against."""

    ground_truth: str
    candidates: tuple[str, ...] = ()

    def golds(self, use_candidates: bool = True) -> list[str]:
        answers = [self.ground_truth, *(self.candidates if use_candidates else ())]
        return [a for a in dict.fromkeys(answers) if normalize_answer(a)]


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except (ValueError, RecursionError):  # not JSON, or JSON Python cannot read (huge integers, deep nesting)
                return [value]
        else:
            return [value]
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def parse_label(label) -> Label:
    """A `Label` from what OpenRLHF hands the executor (`data[label_key]`).

    Accepted: a dict or a JSON object string with `ground_truth` (or `answer`) and optional `candidate_answers`
    (or `candidates`, a list or a JSON list string, as in MMSearch-R1's parquet); a list of answers (first =
    ground truth); any other string = the ground truth itself.
    """
    if isinstance(label, str):
        text = label.strip()
        if text.startswith("{") or text.startswith("["):
            try:
                label = json.loads(text)
            except json.JSONDecodeError:
                return Label(label)
            except (ValueError, RecursionError):  # an integer of over 4,300 digits, nesting deeper than the stack
                raise ValueError(f"label JSON cannot be read (a huge integer or deep nesting): {text[:80]}") from None
        else:
            return Label(label)
    if isinstance(label, dict):
        truth = label.get("ground_truth", label.get("answer"))
        candidates = _as_list(label.get("candidate_answers", label.get("candidates")))
        truths = _as_list(truth)
        if not truths:
            raise ValueError(f"label has no ground_truth/answer: {str(label)[:200]}")
        return Label(truths[0], tuple(truths[1:] + candidates))
    if isinstance(label, list | tuple):
        answers = _as_list(list(label))
        if not answers:
            raise ValueError("label is an empty list of answers")
        return Label(answers[0], tuple(answers[1:]))
    raise ValueError(f"unsupported label type {type(label).__name__}")


def exact_match(prediction: str, golds: list[str]) -> bool:
    pred = normalize_answer(prediction)
    return bool(pred) and any(pred == normalize_answer(g) for g in golds)


def substring_match(prediction: str, golds: list[str]) -> bool:
    pred = f" {normalize_answer(prediction)} "
    return any(f" {g} " in pred for g in map(normalize_answer, golds) if g)


def token_f1(prediction: str, golds: list[str]) -> float:
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


@dataclass
class RewardResult:
    reward: float
    score: float  # correctness in 0-1
    exact: float = 0.0
    substring: float = 0.0
    f1: float = 0.0
    judged: float = 0.0  # 1 when the judge gave the verdict used
    judge_errors: float = 0.0


def rule_scores(answer: str | None, label: Label, config: RewardConfig) -> tuple[float, float, float]:
    """(exact, substring, f1) of an answer; all 0 without an answer."""
    if answer is None:
        return 0.0, 0.0, 0.0
    golds = label.golds(config.use_candidates)
    return float(exact_match(answer, golds)), float(substring_match(answer, golds)), token_f1(answer, golds)


def combine(correct: float, format_ok: bool, searched: bool, config: RewardConfig) -> float:
    penalty = 1.0 - config.search_penalty if (correct > 0 and searched) else 1.0
    return config.accuracy_weight * correct * penalty + config.format_weight * float(format_ok)


class LLMJudge:
    """Asks an OpenAI-compatible chat endpoint whether an answer is correct. `judge` returns True/False, or None
    when no verdict could be had (the caller then keeps the rule-based result)."""

    PROMPT = (
        "You are grading an answer to a question against reference answers.\n"
        "Question: {question}\nReference answers: {golds}\nAnswer to grade: {answer}\n"
        "Is the answer to grade correct, i.e. does it mean the same as one of the reference answers? "
        'Reply with exactly one word: "yes" or "no".'
    )

    def __init__(self, config: JudgeConfig):
        self.config = config
        self._semaphore = asyncio.Semaphore(max(1, config.max_concurrency))

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    @staticmethod
    def verdict(content: str) -> bool | None:
        words = re.findall(r"[a-z]+", content.lower())
        if not words:
            return None
        return {"yes": True, "no": False, "correct": True, "incorrect": False}.get(words[0])

    async def judge(self, question: str, answer: str, golds: list[str]) -> bool | None:
        cfg = self.config
        prompt = self.PROMPT.format(question=question, golds=json.dumps(golds, ensure_ascii=False), answer=answer)
        body = {
            "model": cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": 4,
        }
        url = cfg.url.rstrip("/") + "/chat/completions"
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        async with self._semaphore:
            for attempt in range(max(1, cfg.attempts)):
                try:
                    async with aiohttp.ClientSession(timeout=timeout) as session:
                        async with session.post(url, json=body, headers=self._headers()) as response:
                            if response.status != 200:
                                raise RuntimeError(f"HTTP {response.status}")
                            data = await response.json(content_type=None)
                    result = self.verdict(data["choices"][0]["message"]["content"] or "")
                    if result is not None:
                        return result
                    raise RuntimeError("reply is neither yes nor no")
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # any failure: retry, then give up to the rules
                    # The URL and the error only: the key is in a header and never logged.
                    logger.warning("judge %s attempt %d failed: %s", url, attempt + 1, type(err).__name__)
                    if attempt + 1 < cfg.attempts:
                        await asyncio.sleep(min(2.0, 0.25 * 2**attempt))
        return None


async def compute_reward(
    answer: str | None,
    label: Label,
    format_ok: bool,
    searched: bool,
    config: RewardConfig,
    question: str = "",
    judge: LLMJudge | None = None,
) -> RewardResult:
    """Reward and score of one finished trajectory. Never raises for a judge failure."""
    exact, substring, f1 = rule_scores(answer, label, config)
    correct = {"exact": exact, "substring": substring, "f1": f1}[config.match]
    judged = judge_errors = 0.0
    ask = judge is not None and answer is not None and (config.judge.mode == "always" or correct < 1.0)
    if ask:
        verdict = await judge.judge(question, answer, label.golds(config.use_candidates))
        if verdict is None:
            judge_errors = 1.0
        else:
            correct, judged = float(verdict), 1.0
    reward = combine(correct, format_ok, searched, config)
    return RewardResult(reward, correct, exact, substring, f1, judged, judge_errors)
