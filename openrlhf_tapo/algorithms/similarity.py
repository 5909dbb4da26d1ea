"""Parameter similarity per tool type, chosen by name: the equivalence TAPO uses to find witness tool calls.

Information-acquisition tools are parameter-deterministic: equal canonical parameters give equal results, so
similar parameters define equivalent actions. Each similarity works in two steps:

- `key(params) -> Hashable | None`: the exact-equivalence class of a call (what TAPO hashes its reference groups
  on). `None` means the parameters cannot be read by this similarity (wrong shape); such a call is never matched
  and TAPO counts it as unkeyable.
- `score(a, b) -> float in [0, 1]` on parameters, derived from `score_keys` on their keys.

Contract every similarity keeps (TAPO relies on it for hashed exact matching and for blocking):
1. `score_keys(k, k) == 1` and `score_keys(a, b) == 1` only when `a == b`: the exact group is the only perfect match.
2. For `a != b` and a threshold `0 < theta <= 1`, `score_keys(a, b) >= theta` only when `blocks(a, theta)` and
   `blocks(b, theta)` share an element: fuzzy candidates are found through an inverted index on blocks, never by
   comparing all pairs (equal keys are found by the hashed lookup).
3. `exact_only = True` means `score_keys` is 1 on equal keys and 0 otherwise (no fuzzy search is done).
4. `prompt_local = True` means the parameters name objects local to one prompt (image refs: `img_0` of two prompts
   are two different images), so TAPO compares such calls within the same prompt even under `scope="batch"`.

Registered names (`SIMILARITIES`, extend with `register_similarity`):
- `text_exact` - `{"query": str}`: NFKC + SQuAD-style normalised query (lower-case, punctuation removed, articles
  a/an/the removed, whitespace collapsed); 1 when equal, else 0.
- `text_fuzzy` - `{"query": str}`: token-set Jaccard |A∩B| / |A∪B| of the normalised query tokens. Word order is
  ignored (search backends are bag-of-words); the key is the token set, so reordered queries are one class.
- `image` - `image_search {"image": "img_K", "bbox"?: [x1, y1, x2, y2]}` (0-1000 relative): 0 for different
  images; the IoU of the two crops on the same image, where a missing bbox is the whole image (0, 0, 1000, 1000),
  so the same image with the same crop scores 1.
- `bbox_iou` - `zoom {"image": "img_K", "bbox": [...]}`: same image and IoU of the boxes; the bbox is required.
- `exact_json` - any tool: canonical JSON (sorted keys, no whitespace) equality. The fallback for unknown tools.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Hashable, Iterable, Mapping
from functools import lru_cache
from typing import Any

WHOLE_IMAGE = (0.0, 0.0, 1000.0, 1000.0)

_PUNCTUATION = re.compile(r"[^\w\s]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation after Unicode NFKC: lower-case, drop invisible format characters (zero-width
    spaces and joiners, soft hyphens), drop punctuation, drop articles, collapse whitespace.

    NFKC first, so composed and decomposed letters are one letter (the punctuation rule would otherwise drop a
    decomposed accent and keep a composed one) and full-width punctuation and digits are their ASCII forms.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = _PUNCTUATION.sub("", text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def text_tokens(text: str) -> frozenset[str]:
    """The set of normalised tokens of `text`."""
    return frozenset(normalize_text(text).split())


# Queries repeat across the trajectories of a step and across steps; they are short, so caching them is cheap
# (observations are long and are not cached here).
_query_text = lru_cache(maxsize=65536)(normalize_text)
_query_tokens = lru_cache(maxsize=65536)(text_tokens)


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets are identical (1.0)."""
    if a == b:
        return 1.0
    return len(a & b) / len(a | b)


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when the union has no area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Similarity:
    """Base class: subclasses define `key`, `score_keys` and `blocks` under the contract in the module docstring."""

    exact_only = False
    prompt_local = False

    def key(self, params: Mapping[str, Any]) -> Hashable | None:
        raise NotImplementedError

    def score_keys(self, a: Hashable, b: Hashable) -> float:
        raise NotImplementedError

    def blocks(self, key: Hashable, theta: float) -> Iterable[Hashable]:
        return (key,)

    def score(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
        """Similarity in [0, 1] of two parameter dicts; 0 when either cannot be keyed."""
        ka, kb = self.key(a), self.key(b)
        if ka is None or kb is None:
            return 0.0
        return self.score_keys(ka, kb)


class ExactSimilarity(Similarity):
    """1 on equal keys, 0 otherwise."""

    exact_only = True

    def score_keys(self, a: Hashable, b: Hashable) -> float:
        return 1.0 if a == b else 0.0


class TextExact(ExactSimilarity):
    def key(self, params: Mapping[str, Any]) -> str | None:
        query = params.get("query") if isinstance(params, Mapping) else None
        return _query_text(query) if isinstance(query, str) else None


class TextFuzzy(Similarity):
    def key(self, params: Mapping[str, Any]) -> frozenset[str] | None:
        query = params.get("query") if isinstance(params, Mapping) else None
        return _query_tokens(query) if isinstance(query, str) else None

    def score_keys(self, a: frozenset[str], b: frozenset[str]) -> float:
        return jaccard(a, b)

    def blocks(self, key: frozenset[str], theta: float) -> Iterable[str]:
        # Prefix filtering: if Jaccard(A, B) >= theta, the first |A| - ceil(theta |A|) + 1 tokens of A and the
        # first |B| - ceil(theta |B|) + 1 of B in one fixed global order share a token. The order puts long tokens
        # first: short ones ("of", "who") are the common ones, so they rarely become blocks and candidate lists stay
        # short under scope="batch". The 1e-9 only ever lengthens a prefix (safe). An empty set has no block: it
        # only matches itself, by the exact lookup.
        tokens = sorted(key, key=_rare_first)
        return tokens[: len(tokens) - math.ceil(theta * len(tokens) - 1e-9) + 1]


def _rare_first(token: str) -> tuple[int, str]:
    return -len(token), token


def _bbox(value: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))


class ImageRegion(Similarity):
    """Same image ref, then IoU of the crops. `bbox_required=False`: a missing bbox is the whole image."""

    prompt_local = True

    def __init__(self, bbox_required: bool):
        self.bbox_required = bbox_required

    def key(self, params: Mapping[str, Any]) -> tuple[str, tuple[float, float, float, float]] | None:
        image = params.get("image") if isinstance(params, Mapping) else None
        if not isinstance(image, str):
            return None
        raw = params.get("bbox")
        if raw is None:
            return None if self.bbox_required else (image, WHOLE_IMAGE)
        box = _bbox(raw)
        return None if box is None else (image, box)

    def score_keys(self, a: tuple, b: tuple) -> float:
        if a == b:
            return 1.0
        if a[0] != b[0]:
            return 0.0
        # Different boxes must not score a perfect 1 (contract 1), whatever the float rounding.
        return min(box_iou(a[1], b[1]), math.nextafter(1.0, 0.0))

    def blocks(self, key: tuple, theta: float) -> Iterable[str]:
        return (key[0],)


class CanonicalJson(ExactSimilarity):
    def key(self, params: Mapping[str, Any]) -> str | None:
        try:
            return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            return None


SIMILARITIES: dict[str, Similarity] = {
    "text_exact": TextExact(),
    "text_fuzzy": TextFuzzy(),
    "image": ImageRegion(bbox_required=False),
    "bbox_iou": ImageRegion(bbox_required=True),
    "exact_json": CanonicalJson(),
}
FALLBACK_SIMILARITY = "exact_json"


def register_similarity(name: str, similarity: Similarity) -> None:
    """Add a similarity under `name` (e.g. for a new tool); refuses to replace an existing one."""
    if name in SIMILARITIES:
        raise ValueError(f"similarity {name!r} is already registered")
    SIMILARITIES[name] = similarity


def get_similarity(name: str) -> Similarity:
    """The registered similarity called `name`; ValueError listing the known names otherwise."""
    try:
        return SIMILARITIES[name]
    except KeyError:
        raise ValueError(f"unknown similarity {name!r}; registered: {', '.join(sorted(SIMILARITIES))}") from None
