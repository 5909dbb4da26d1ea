"""Questions of the bundled task, their gold tool-use traces, and the train/eval splits.

Three kinds, each needing the tools in a fixed order:

- `city`    "Which city is the organisation with this emblem based in?"
            image_search(img_0) -> the entity's name -> text_search(name) -> profile + news -> the profile's city
- `founded` "In which year was the organisation with this emblem founded?"   same chain, answer the founding year
- `badge`   "What digit is printed on the small badge in the <corner> corner of this image?"
            zoom(img_0, corner box) -> read the digit -> answer

Credit misassignment is common by construction: text_search on the right name returns the profile AND a news item
naming a second city and year for the same entity, so a trajectory with the correct calls often ends in a wrong
answer (the distractor), and the answers come from small sets (6 cities, 5 digits), so a policy that skipped the
tools is sometimes right by chance. GRPO then punishes the correct calls of the first and rewards the second;
TAPO's transfer finds the same calls in successful trajectories of the group and softens that penalty.

The question image is a jittered copy of the entity's emblem (shifted, rescaled, re-lit), so image search has to
work by perceptual similarity, not identity. Train and eval splits ask about the same entities with different
images and kinds (closed-book facts the policy can learn through the tools, not through memorised pixels).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from openrlhf_tapo.task.knowledge_base import CITIES, CORNERS, Entity, KnowledgeBase

KINDS = ("city", "founded", "badge")


@dataclass(frozen=True)
class QuestionSetConfig:
    """How many questions of which kinds.

    num_train / num_eval: questions per split.
    kind_weights: relative frequency of `city`, `founded`, `badge`.
    seed: question images and kinds are a function of the seed (independent of the knowledge-base seed).
    """

    num_train: int = 96
    num_eval: int = 32
    kind_weights: tuple[float, float, float] = (0.4, 0.3, 0.3)
    seed: int = 0

    def validate(self) -> None:
        if self.num_train < 1 or self.num_eval < 0:
            raise ValueError(f"num_train must be >= 1 and num_eval >= 0, got {self.num_train}, {self.num_eval}")
        if len(self.kind_weights) != len(KINDS) or min(self.kind_weights) < 0 or sum(self.kind_weights) <= 0:
            raise ValueError(
                f"kind_weights needs {len(KINDS)} non-negative weights for {KINDS}, got {self.kind_weights}"
            )


@dataclass(frozen=True)
class Question:
    id: str
    kind: str
    question: str
    image: str  # PNG path relative to the task directory
    answer: str
    choices: tuple[str, ...]  # every answer the question's kind allows (empty: open set), for chance level
    entity_id: str
    gold_actions: tuple[str, ...]  # assistant turns of a correct trace: tool calls, then the answer


def tool_call_text(name: str, arguments: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def answer_text(answer: str) -> str:
    return f"<answer>{answer}</answer>"


def _question(kind: str, entity: Entity, qid: str, image: str) -> Question:
    if kind == "badge":
        corner = entity.badge_corner
        return Question(
            id=qid,
            kind=kind,
            question=f"What digit is printed on the small badge in the {corner} corner of this image?",
            image=image,
            answer=str(entity.badge_digit),
            choices=tuple(str(d) for d in range(1, 6)),
            entity_id=entity.id,
            gold_actions=(
                tool_call_text("zoom", {"image": "img_0", "bbox": list(CORNERS[corner])}),
                answer_text(str(entity.badge_digit)),
            ),
        )
    search = (
        tool_call_text("image_search", {"image": "img_0"}),
        tool_call_text("text_search", {"query": entity.name}),
    )
    if kind == "city":
        text, answer, choices = "Which city is the organisation with this emblem based in?", entity.city, CITIES
    elif kind == "founded":
        text, answer, choices = (
            "In which year was the organisation with this emblem founded?",
            str(entity.founded),
            (),
        )
    else:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")
    return Question(qid, kind, text, image, answer, tuple(choices), entity.id, (*search, answer_text(answer)))


def generate_questions(kb: KnowledgeBase, config: QuestionSetConfig, out_dir: str | Path) -> dict[str, list[Question]]:
    """Draw both splits, writing their question images under `out_dir/questions/`.

    Entities are visited round-robin (shuffled) so every entity is asked about in the training split.
    """
    config.validate()
    out = Path(out_dir)
    (out / "questions").mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    splits: dict[str, list[Question]] = {}
    for split, count in (("train", config.num_train), ("eval", config.num_eval)):
        order: list[Entity] = []
        questions = []
        for i in range(count):
            if not order:
                order = list(kb.entities)
                rng.shuffle(order)
            entity = order.pop()
            kind = rng.choices(KINDS, weights=config.kind_weights)[0]
            qid = f"{split}-{i:04d}"
            image = f"questions/{qid}.png"
            kb.draw(entity, jitter=random.Random(rng.random())).save(out / image)
            questions.append(_question(kind, entity, qid, image))
        splits[split] = questions
    return splits


def write_questions(splits: dict[str, list[Question]], out_dir: str | Path) -> dict[str, Path]:
    """Write `questions_<split>.jsonl` (one Question per line) and return their paths."""
    paths = {}
    for split, questions in splits.items():
        path = Path(out_dir) / f"questions_{split}.jsonl"
        with path.open("w") as f:
            for q in questions:
                f.write(json.dumps(asdict(q)) + "\n")
        paths[split] = path
    return paths


def read_questions(path: str | Path) -> list[Question]:
    with Path(path).open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Question(**{**r, "choices": tuple(r["choices"]), "gold_actions": tuple(r["gold_actions"])}) for r in rows]
