"""The synthetic visual knowledge base of the bundled task, generated from a seed.

Every entity is a fictional organisation with a two-syllable code name (`KAVO`), an emblem (a procedurally drawn
image) and a home city. The emblem gives each entity its own perceptual hash: a (shape, background pattern)
layout, two colours and a random stroke signature, so image search on a question image (the emblem itself) finds
its entity.

The text corpus holds two short passages per entity, both titled with its name: a profile ("X is based in C.") and
a news item ("X opened a branch in D.") that names a DIFFERENT city. A text search on the name returns both, so a
policy that searched correctly can still answer wrongly by reading the wrong passage: the credit misassignment
TAPO corrects.

The base is large (default 512 entities) and every question asks about its own entity (`task/questions.py`), so
the facts cannot be memorised from training: they must be read from the tools. `permuted(seed)` rotates the home
cities among the entities, the counterfactual base against which tool-following is measured (`task/gates.py`).

Nothing here is stored in git: `KnowledgeBase.generate(config)` rebuilds the same base from the seed, and
`write(out_dir)` writes the corpora (jsonl in the local index's input layout) and the images.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star", "cross", "ring")
PATTERNS = ("horizontal stripes", "vertical stripes", "checks", "dots", "diagonal stripes", "rings", "plain")
COLOURS = {
    "red": (200, 40, 40),
    "blue": (40, 70, 200),
    "green": (40, 150, 60),
    "yellow": (230, 200, 40),
    "purple": (130, 50, 170),
    "orange": (235, 130, 30),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}
# 40 home cities, each one token of the tiny model (`prepare.py`). Many, so that a guess is right 1 time in 40 and
# the answer must be read; the same 40 in every split, so every city token is seen in training.
CITIES = tuple(
    a + b
    for a in ("Or", "Dun", "Kest", "Hal", "Bri", "Tol", "Mar", "Vel")
    for b in ("vale", "mere", "wick", "vern", "sa")
)
# Names are two syllables, each an added token of the tiny model (`prepare.py`): every syllable occurs in many
# training names, so a held-out name is a new pair of known tokens, and copying it is copying two tokens.
# (A name that were one token of its own would never be seen in training, its embedding left random.)
SYLLABLES = tuple(c + v for c in "BDKLMNPRSTVZ" for v in "AEIOU")


@dataclass(frozen=True)
class KnowledgeBaseConfig:
    """Size and seed of the generated knowledge base.

    num_entities: entities (one question each; emblem layouts repeat beyond 56, colours and strokes still differ).
    image_size: side of the square emblem images in pixels (56: 4 vision tokens after Qwen2-VL's patch merge).
    seed: everything (names, facts, drawings) is a function of the seed.
    """

    num_entities: int = 512
    image_size: int = 56
    seed: int = 0

    def validate(self) -> None:
        if not 2 <= self.num_entities <= len(SYLLABLES) ** 2 // 2:
            raise ValueError(f"num_entities must be in [2, {len(SYLLABLES) ** 2 // 2}], got {self.num_entities}")
        if self.image_size < 28:
            raise ValueError(f"image_size must be >= 28 pixels (one Qwen2-VL merged patch), got {self.image_size}")


@dataclass(frozen=True)
class Entity:
    id: str
    name: str
    city: str  # named by the profile: the answer
    other_city: str  # named by the news item: the distractor
    shape: str
    pattern: str
    colour: str
    background: str
    signature: tuple[tuple[int, int, int, int], ...]  # stroke end points, in 0-1000 coordinates

    @property
    def profile_id(self) -> str:
        return f"{self.id}-profile"

    @property
    def news_id(self) -> str:
        return f"{self.id}-news"


def _name(rng: random.Random) -> str:
    return rng.choice(SYLLABLES) + rng.choice(SYLLABLES)


class KnowledgeBase:
    """The entities of one seed, their emblems and text passages."""

    def __init__(self, config: KnowledgeBaseConfig, entities: list[Entity]):
        self.config = config
        self.entities = entities
        self.by_id = {e.id: e for e in entities}

    @classmethod
    def generate(cls, config: KnowledgeBaseConfig | None = None) -> KnowledgeBase:
        config = config or KnowledgeBaseConfig()
        config.validate()
        rng = random.Random(config.seed)
        layouts = [(s, p) for s in SHAPES for p in PATTERNS]
        rng.shuffle(layouts)
        names: set[str] = set(CITIES)
        entities = []
        colour_names = list(COLOURS)
        for i in range(config.num_entities):
            name = _name(rng)
            while name in names:
                name = _name(rng)
            names.add(name)
            shape, pattern = layouts[i % len(layouts)]
            colour, background = rng.sample(colour_names, 2)
            city, other_city = rng.sample(CITIES, 2)
            signature = tuple(
                (rng.randint(0, 1000), rng.randint(0, 1000), rng.randint(0, 1000), rng.randint(0, 1000))
                for _ in range(3)
            )
            entities.append(Entity(f"e{i:05d}", name, city, other_city, shape, pattern, colour, background, signature))
        return cls(config, entities)

    def permuted(self, seed: int) -> KnowledgeBase:
        """The counterfactual base: every entity's home city replaced by another city (never its own, never its
        news city), so an answer that follows the tools changes and one recalled from training does not."""
        rng = random.Random(seed)
        entities = []
        for e in self.entities:
            city = rng.choice([c for c in CITIES if c not in (e.city, e.other_city)])
            entities.append(replace(e, city=city))
        return KnowledgeBase(self.config, entities)

    def draw(self, entity: Entity) -> Image.Image:
        """The emblem of `entity`."""
        size = self.config.image_size
        img = Image.new("RGB", (size, size), COLOURS[entity.background])
        draw = ImageDraw.Draw(img)
        _draw_pattern(draw, entity.pattern, size, _shade(COLOURS[entity.background]))
        _draw_shape(draw, entity.shape, size, COLOURS[entity.colour])
        for x1, y1, x2, y2 in entity.signature:
            draw.line(
                [(x1 * size // 1000, y1 * size // 1000), (x2 * size // 1000, y2 * size // 1000)],
                fill=(0, 0, 0),
                width=max(2, size // 45),
            )
        return img

    def text_documents(self) -> list[dict]:
        """Profile and news passages; no URL (the tools then show none, which keeps observations short)."""
        docs = []
        for e in self.entities:
            docs.append({"id": e.profile_id, "title": e.name, "text": f"{e.name} is based in {e.city}.", "url": ""})
            docs.append(
                {"id": e.news_id, "title": e.name, "text": f"{e.name} opened a branch in {e.other_city}.", "url": ""}
            )
        return docs

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write images/<id>.png, text_corpus.jsonl, image_corpus.jsonl and entities.json under `out_dir`.

        Image records name their PNG relative to the jsonl file (`image`), the layout `LocalIndex` reads.
        """
        out = Path(out_dir)
        (out / "images").mkdir(parents=True, exist_ok=True)
        text_path, image_path = out / "text_corpus.jsonl", out / "image_corpus.jsonl"
        with text_path.open("w") as f:
            for doc in self.text_documents():
                f.write(json.dumps(doc) + "\n")
        with image_path.open("w") as f:
            for e in self.entities:
                png = f"images/{e.id}.png"
                self.draw(e).save(out / png)
                f.write(json.dumps({"id": e.id, "title": e.name, "url": "", "image": png}) + "\n")
        entities_path = out / "entities.json"
        entities_path.write_text(
            json.dumps({"config": asdict(self.config), "entities": [asdict(e) for e in self.entities]}, indent=1)
        )
        return {
            "text_corpus": text_path,
            "image_corpus": image_path,
            "entities": entities_path,
            "images": out / "images",
        }

    def build_index(self, out_dir: str | Path) -> Path:
        """Write the corpora under `out_dir` and build the local search index in `out_dir/index`."""
        from openrlhf_tapo.search.local_index import LocalIndex, read_jsonl

        paths = self.write(out_dir)
        index_dir = Path(out_dir) / "index"
        LocalIndex.build(
            read_jsonl(paths["text_corpus"]), read_jsonl(paths["image_corpus"], images=True), index_dir, overwrite=True
        )
        return index_dir


def _shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A contrasting tone of the background for its pattern (dark on light, light on dark)."""
    light = sum(rgb) > 380
    return tuple(int(v * 0.45) if light else min(255, v + 110) for v in rgb)


def _draw_pattern(draw: ImageDraw.ImageDraw, pattern: str, size: int, fill) -> None:
    step = size // 8
    if pattern == "horizontal stripes":
        for y in range(0, size, step):
            draw.rectangle([0, y, size, y + step // 2], fill=fill)
    elif pattern == "vertical stripes":
        for x in range(0, size, step):
            draw.rectangle([x, 0, x + step // 2, size], fill=fill)
    elif pattern == "checks":
        for y in range(0, size, step):
            for x in range((y // step % 2) * step, size, 2 * step):
                draw.rectangle([x, y, x + step, y + step], fill=fill)
    elif pattern == "dots":
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse([x - step // 5, y - step // 5, x + step // 5, y + step // 5], fill=fill)
    elif pattern == "diagonal stripes":
        for k in range(-size, size, step):
            draw.line([(k, 0), (k + size, size)], fill=fill, width=step // 3)
    elif pattern == "rings":
        for r in range(step, size, step):
            draw.ellipse([size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r], outline=fill, width=step // 4)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, size: int, fill) -> None:
    c, r = size / 2, size * 0.28
    if shape == "circle":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=fill)
    elif shape == "square":
        draw.rectangle([c - r, c - r, c + r, c + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(c, c - r), (c - r, c + r), (c + r, c + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(c, c - r), (c + r, c), (c, c + r), (c - r, c)], fill=fill)
    elif shape == "hexagon":
        draw.regular_polygon((c, c, r), 6, fill=fill)
    elif shape == "star":
        draw.regular_polygon((c, c, r), 5, fill=fill)
        draw.regular_polygon((c, c, r), 5, rotation=36, fill=fill)
    elif shape == "cross":
        draw.rectangle([c - r, c - r / 3, c + r, c + r / 3], fill=fill)
        draw.rectangle([c - r / 3, c - r, c + r / 3, c + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([c - r, c - r, c + r, c + r], outline=fill, width=int(r / 2.5))
