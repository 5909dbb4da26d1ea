"""Questions of the bundled task, their gold tool-use traces, the weak teacher's traces, and the splits.

One question per entity: "Which city is the organisation with this emblem based in?" with the emblem as the image.
The answer is only in the tools: image_search(img_0) names the entity, text_search(name) returns its profile (the
home city) and a news item (another city); the answer is the profile's city. Entities are split, not questions:
the eval split asks about entities that no training question, warm-start trace or RL step ever shows, and every
entity is asked about once, so a policy succeeds by reading its observations, not by recalling facts.

The `recall_cost` preset (`generate_questions(known_share=...)`, `TaskConfig.recall_cost`) names the organisation
in every question (`NAMED_QUESTION`) and marks a seeded share of each split's entities as known (`kind` "recall":
the warm start teaches their cities, as pre-training would; the rest are "needs_tool": only the tools know them).
The name in the question is what makes recall possible for a tiny model: it memorises name -> city, where it could
not memorise emblem -> city. Unknown eval entities stay held out from the warm start and RL, as in the default.

A third split, `select` (`num_select` entities, none by default), is held out like `eval` and kept apart from it:
it is the one to choose settings on (warm start, RL steps, learning rate), so that the questions a result is
reported on never chose the settings that produced it (docs/CONTRIBUTING.md, "Experiments").

Credit misassignment is common by construction: a trajectory with both right calls fails when it reads the news
item, and an answer without tools is right by chance (1 in 40 cities). GRPO then punishes the right calls of the
first; TAPO finds the same calls in successful trajectories of the group and softens that penalty.

The warm start imitates a WEAK teacher (`teacher_actions`): on some questions it answers without tools (a guess),
and after searching it sometimes answers the news item's city. Its two rates are the knobs that put the warm
start's accuracy in the range where RL has room (`WarmStartConfig`); they were set once from the gates, before
any GRPO-vs-TAPO comparison (docs/results.md).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from openrlhf_tapo.task.knowledge_base import CITIES, Entity, KnowledgeBase

QUESTION = "Which city is the organisation with this emblem based in?"
NAMED_QUESTION = "Which city is {name}, the organisation with this emblem, based in?"  # the recall_cost preset's
# Question kinds of the recall_cost preset (the prompt rows' `datasource`); the default task's questions have none.
RECALL, NEEDS_TOOL = "recall", "needs_tool"
KINDS = (RECALL, NEEDS_TOOL)


@dataclass(frozen=True)
class QuestionSetConfig:
    """How the entities are split.

    num_eval: entities held out for evaluation (one question each); every other entity gets one training question.
    seed: the split is a function of the seed (independent of the knowledge-base seed).
    num_select: entities held out for choosing settings (the `select` split), taken after the eval entities in the
    seeded order; 0 (default) writes no select split and leaves the other two exactly as before it existed.
    """

    num_eval: int = 128
    seed: int = 0
    num_select: int = 0

    def validate(self, num_entities: int) -> None:
        if self.num_eval < 0 or self.num_select < 0 or self.num_eval + self.num_select >= num_entities:
            raise ValueError(
                f"num_eval ({self.num_eval}) and num_select ({self.num_select}) must be >= 0 and leave training "
                f"an entity: num_eval + num_select < num_entities = {num_entities}"
            )


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    image: str  # PNG path relative to the knowledge-base directory
    answer: str  # the profile's city
    distractor: str  # the news item's city
    choices: tuple[str, ...]  # every answer allowed, for chance level
    entity_id: str
    entity: str  # the name image search returns and text search needs
    gold_actions: tuple[str, ...]  # assistant turns of the ideal trace: tool calls, then the answer (recall: answer)
    kind: str | None = None  # RECALL or NEEDS_TOOL in the recall_cost preset; None (and not written) in the default


def tool_call_text(name: str, arguments: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def answer_text(answer: str) -> str:
    return f"<answer>{answer}</answer>"


def search_calls(entity_name: str) -> tuple[str, str]:
    return (
        tool_call_text("image_search", {"image": "img_0"}),
        tool_call_text("text_search", {"query": entity_name}),
    )


def _question(entity: Entity, qid: str, image: str, kind: str | None = None) -> Question:
    searched = (*search_calls(entity.name), answer_text(entity.city))
    if kind is None:
        return Question(qid, QUESTION, image, entity.city, entity.other_city, CITIES, entity.id, entity.name, searched)
    gold = (answer_text(entity.city),) if kind == RECALL else searched
    text = NAMED_QUESTION.format(name=entity.name)
    return Question(qid, text, image, entity.city, entity.other_city, CITIES, entity.id, entity.name, gold, kind)


def known_indices(split: str, size: int, known_share: float, seed: int) -> set[int]:
    """Which of a split's `size` questions are known (RECALL): round(known_share * size) of them, drawn with a seed
    of their own per split, so every split holds the same share and the draw does not depend on the other splits."""
    return set(random.Random(f"known/{seed}/{split}").sample(range(size), round(known_share * size)))


def teacher_actions(
    question: Question, rng: random.Random, direct_share: float, misread_share: float, known_search_share: float = 0.0
) -> list[str]:
    """The weak teacher's assistant turns for `question`: with probability `direct_share` a guessed answer without
    tools; otherwise both searches, then the news item's city with probability `misread_share`, else the answer.

    On a RECALL question the teacher knows the city: it answers it directly, except with probability
    `known_search_share` when it searches first (and reads right): a warm start that over-searches, which leaves RL
    room to drop calls."""
    if question.kind == RECALL:
        if rng.random() < known_search_share:
            return [*search_calls(question.entity), answer_text(question.answer)]
        return [answer_text(question.answer)]
    if rng.random() < direct_share:
        return [answer_text(rng.choice(question.choices))]
    answer = question.distractor if rng.random() < misread_share else question.answer
    return [*search_calls(question.entity), answer_text(answer)]


def generate_questions(
    kb: KnowledgeBase, config: QuestionSetConfig, out_dir: str | Path, known_share: float | None = None
) -> dict[str, list[Question]]:
    """The splits (one question per entity; `num_eval` entities held out for eval, the next `num_select` for the
    select split when > 0, the rest train), writing the question images (each the entity's emblem, the image the
    index holds) under `out_dir/questions/`.

    `known_share` (the recall_cost preset): every question names its organisation, and that share of each split
    is RECALL (`known_indices`), the rest NEEDS_TOOL. None: the default task's questions, unchanged."""
    config.validate(len(kb.entities))
    out = Path(out_dir)
    (out / "questions").mkdir(parents=True, exist_ok=True)
    order = list(kb.entities)
    random.Random(config.seed).shuffle(order)
    held_out = config.num_eval + config.num_select
    parts = [("eval", order[: config.num_eval]), ("train", order[held_out:])]
    if config.num_select:
        parts.append(("select", order[config.num_eval : held_out]))
    splits: dict[str, list[Question]] = {}
    for split, entities in parts:
        known = known_indices(split, len(entities), known_share, config.seed) if known_share is not None else None
        questions = []
        for i, entity in enumerate(entities):
            qid = f"{split}-{i:05d}"
            image = f"questions/{qid}.png"
            kb.draw(entity).save(out / image)
            kind = None if known is None else RECALL if i in known else NEEDS_TOOL
            questions.append(_question(entity, qid, image, kind))
        splits[split] = questions
    return splits


def write_questions(splits: dict[str, list[Question]], out_dir: str | Path) -> dict[str, Path]:
    """Write `questions_<split>.jsonl` (one Question per line) and return their paths."""
    paths = {}
    for split, questions in splits.items():
        path = Path(out_dir) / f"questions_{split}.jsonl"
        with path.open("w") as f:
            for q in questions:
                row = asdict(q)
                if q.kind is None:  # the default task's files stay byte for byte what they were before kinds
                    del row["kind"]
                f.write(json.dumps(row) + "\n")
        paths[split] = path
    return paths


def read_questions(path: str | Path) -> list[Question]:
    with Path(path).open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Question(**{**r, "choices": tuple(r["choices"]), "gold_actions": tuple(r["gold_actions"])}) for r in rows]
