"""The synthetic visual knowledge base of the bundled task, generated from a seed.

Every entity is a fictional organisation with an emblem (a procedurally drawn image) and a few text facts. The
emblem is built so the local index's perceptual-hash image search can tell entities apart: each entity gets its
own (shape, background pattern) pair plus a random stroke signature, so the grey-level structure differs even
when colours repeat. A small numbered badge in one corner is the detail that needs `zoom`: at the resolution the
processor feeds the model (about 112 x 112) its digit is a few pixels wide.

The text corpus holds two documents per entity: a profile (home city, founding year, emblem) and a news item that
names the same entity with a DIFFERENT city and year. Both come back for a text search on the entity's name, so a
policy that searched correctly can still answer wrongly: the credit misassignment TAPO corrects.

Nothing here is stored in git: `KnowledgeBase.generate(config)` rebuilds the same base from the seed, and
`write(out_dir)` writes the corpora (jsonl in the local index's input layout) and the images.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

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
CITIES = ("Orvale", "Dunmere", "Kestwick", "Halvern", "Brisa", "Tolmoor")
KINDS = ("guild", "observatory", "rowing club", "choir", "foundry", "library", "orchestra", "brewery")
CORNERS = {  # corner -> zoom box in the tool's 0-1000 relative coordinates
    "top-left": (0, 0, 250, 250),
    "top-right": (750, 0, 1000, 250),
    "bottom-left": (0, 750, 250, 1000),
    "bottom-right": (750, 750, 1000, 1000),
}
_ONSETS = ("v", "k", "t", "m", "r", "s", "b", "d", "l", "n", "p", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "n", "r", "l", "s", "th")


@dataclass(frozen=True)
class KnowledgeBaseConfig:
    """Size and seed of the generated knowledge base.

    num_entities: entities (at most len(SHAPES) * len(PATTERNS) = 56, one emblem layout each).
    image_size: side of the square emblem images in pixels; the badge is image_size // 6 wide.
    seed: everything (names, facts, drawings) is a function of the seed.
    """

    num_entities: int = 24
    image_size: int = 224
    seed: int = 0

    def validate(self) -> None:
        limit = len(SHAPES) * len(PATTERNS)
        if not 2 <= self.num_entities <= limit:
            raise ValueError(
                f"num_entities must be in [2, {limit}] (one shape/pattern pair each), got {self.num_entities}"
            )
        if self.image_size < 96:
            raise ValueError(f"image_size must be >= 96 pixels so the badge stays drawable, got {self.image_size}")


@dataclass(frozen=True)
class Entity:
    id: str
    name: str
    kind: str
    city: str
    founded: int
    other_city: str  # the distractor city named by the news document
    other_year: int  # the distractor year named by the news document
    shape: str
    pattern: str
    colour: str
    background: str
    badge_corner: str
    badge_digit: int
    signature: tuple[tuple[int, int, int, int], ...]  # stroke end points, in 0-1000 coordinates

    @property
    def profile_id(self) -> str:
        return f"{self.id}-profile"

    @property
    def news_id(self) -> str:
        return f"{self.id}-news"


def _name(rng: random.Random) -> str:
    def word(syllables: int) -> str:
        return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))

    return f"{word(2).capitalize()} {word(2).capitalize()}"


class KnowledgeBase:
    """The entities of one seed, their emblems and text documents."""

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
        names: set[str] = set()
        entities = []
        colour_names = list(COLOURS)
        for i in range(config.num_entities):
            name = _name(rng)
            while name in names:
                name = _name(rng)
            names.add(name)
            shape, pattern = layouts[i]
            colour, background = rng.sample(colour_names, 2)
            city, other_city = rng.sample(CITIES, 2)
            founded = rng.randint(1700, 1990)
            other_year = rng.choice([y for y in range(1700, 2000) if abs(y - founded) > 5])
            signature = tuple(
                (rng.randint(0, 1000), rng.randint(0, 1000), rng.randint(0, 1000), rng.randint(0, 1000))
                for _ in range(3)
            )
            entities.append(
                Entity(
                    id=f"e{i:03d}",
                    name=name,
                    kind=rng.choice(KINDS),
                    city=city,
                    founded=founded,
                    other_city=other_city,
                    other_year=other_year,
                    shape=shape,
                    pattern=pattern,
                    colour=colour,
                    background=background,
                    badge_corner=rng.choice(list(CORNERS)),
                    badge_digit=rng.randint(1, 5),
                    signature=signature,
                )
            )
        return cls(config, entities)

    # -- drawing -------------------------------------------------------------------------------------------------

    def draw(self, entity: Entity, jitter: random.Random | None = None) -> Image.Image:
        """The emblem of `entity`; with `jitter`, a slightly shifted, rescaled and re-lit photo of it (the question
        image), which perceptual hashing still matches to the original."""
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
        _draw_badge(draw, entity.badge_corner, entity.badge_digit, size)
        if jitter is None:
            return img
        dx, dy = jitter.randint(-size // 60, size // 60), jitter.randint(-size // 60, size // 60)
        scale = jitter.uniform(0.97, 1.03)
        shifted = img.transform(
            img.size,
            Image.Transform.AFFINE,
            (1 / scale, 0, dx, 0, 1 / scale, dy),
            fillcolor=COLOURS[entity.background],
        )
        gain = jitter.uniform(0.9, 1.1)
        return shifted.point(lambda v: max(0, min(255, int(v * gain))))

    # -- documents -----------------------------------------------------------------------------------------------

    def text_documents(self) -> list[dict]:
        docs = []
        for e in self.entities:
            docs.append(
                {
                    "id": e.profile_id,
                    "title": e.name,
                    "text": (
                        f"{e.name} is {_article(e.kind)} {e.kind} based in {e.city}. It was founded in {e.founded}. "
                        f"Its emblem shows a {e.colour} {e.shape} on a {e.background} field with {e.pattern}."
                    ),
                    "url": f"https://kb.example/{e.id}/profile",
                }
            )
            docs.append(
                {
                    "id": e.news_id,
                    "title": f"{e.name} visits {e.other_city}",
                    "text": (
                        f"In {e.other_year} the {e.kind} {e.name} opened a branch in {e.other_city}, "
                        f"far from its home town."
                    ),
                    "url": f"https://kb.example/{e.id}/news",
                }
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
                record = {
                    "id": e.id,
                    "title": e.name,
                    "url": f"https://kb.example/{e.id}/emblem.png",
                    "image": str(png),
                }
                f.write(json.dumps(record) + "\n")
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


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


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


def _draw_badge(draw: ImageDraw.ImageDraw, corner: str, digit: int, size: int) -> None:
    x1, y1, x2, y2 = (v * size // 1000 for v in CORNERS[corner])
    side = size // 6
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    box = [cx - side // 2, cy - side // 2, cx + side // 2, cy + side // 2]
    draw.rectangle(box, fill=(255, 255, 255), outline=(0, 0, 0), width=1)
    font = ImageFont.load_default(size=max(8, side - 8))
    draw.text((cx, cy), str(digit), fill=(0, 0, 0), font=font, anchor="mm")
