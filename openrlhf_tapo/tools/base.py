"""The tool API shared by the agent executor, the TAPO stage and the synthetic task (docs/design.md, "Tools API").

A tool is one small class: a name, an OpenAI function schema, `canonicalize` (validate + normalise the model's
arguments into the canonical parameter dict that cache keys and TAPO compare) and `execute` (produce a
`ToolResult`). `run` = `execute` + `render`, which registers returned images in the trajectory's `ToolContext`
and labels them `[img_K]` in the observation text. The `ToolRunner` (runner.py, built by registry.py) adds limits,
timeouts, the cache and error handling; the agent only ever calls the runner.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from openrlhf_tapo.search.workers import run_cpu
from openrlhf_tapo.utils.text import replace_surrogates

IMAGE_REF = re.compile(r"^img_(0|[1-9]\d*)$")


# ---- errors -------------------------------------------------------------------------------------------------
class ToolError(Exception):
    """A failed tool call. The message is shown to the model; `kind` is counted (docs/tools.md, "Error kinds")."""

    kind = "tool_error"

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class ToolArgumentError(ToolError):
    kind = "bad_arguments"


class ImageRefError(ToolError):
    kind = "image_ref"


ERROR_PREFIX = "Error: "


def error_text(message: str) -> str:
    """The observation of a failed call: what the model reads, and what `is_error_text` recognises in a transcript
    (the TAPO stage tells failed calls from the tokens this way). A tool's successful text must not start so."""
    return ERROR_PREFIX + message


def is_error_text(observation: str) -> bool:
    """Whether an observation (as written by `error_text`, possibly truncated after the prefix) reports a failure."""
    return observation.startswith(ERROR_PREFIX)


# ---- data ---------------------------------------------------------------------------------------------------
@dataclass
class ToolContext:
    """Per-trajectory state the tools see: the images visible so far, by ref.

    `img_0`, `img_1`, ... are the question images; every image a tool returns gets the next free ref.
    `image_urls` optionally maps a ref to a public URL of that image (web reverse-image search needs one).
    `call_counts` is kept by the runner to enforce the per-tool call limit."""

    images: dict[str, Image.Image] = field(default_factory=dict)
    image_urls: dict[str, str] = field(default_factory=dict)
    call_counts: dict[str, int] = field(default_factory=dict)
    next_index: int = -1
    digests: dict[str, str] = field(default_factory=dict, repr=False)  # ref -> image_digest, filled on demand

    def __post_init__(self):
        if self.next_index < 0:
            used = [int(m.group(1)) for ref in self.images if (m := IMAGE_REF.match(ref))]
            self.next_index = max(used, default=-1) + 1

    def add_image(self, image: Image.Image) -> str:
        ref = f"img_{self.next_index}"
        self.next_index += 1
        self.images[ref] = image
        return ref

    async def image_digest(self, ref: str) -> str:
        """`image_digest` of the image behind `ref`, computed once per trajectory (a ref never changes image)
        in the worker pool (hashing a large image takes milliseconds)."""
        digest = self.digests.get(ref)
        if digest is None:
            digest = self.digests[ref] = await run_cpu(image_digest, self.get_image(ref))
        return digest

    def get_image(self, ref: str) -> Image.Image:
        image = self.images.get(ref)
        if image is None:
            known = ", ".join(sorted(self.images, key=_ref_order)) or "none"
            raise ImageRefError(f"image '{ref}' does not exist in this conversation (available: {known})")
        return image


def _ref_order(ref: str) -> tuple[int, str]:
    m = IMAGE_REF.match(ref)
    return (int(m.group(1)) if m else 1 << 30, ref)


@dataclass
class ToolOutput:
    text: str  # observation text for the model (already truncated to the limit)
    images: list[tuple[str, Image.Image]] = field(default_factory=list)  # (ref, image) pairs returned by the tool
    error: str | None = None  # error kind when the call failed (docs/tools.md, "Error kinds")
    cached: bool = False
    params: dict | None = None  # canonical parameters (None when the arguments did not validate)


@dataclass
class ToolResult:
    """What a tool produced, before its images get refs: the unit the cache stores.

    `text` is the observation body; each image comes with a caption, rendered as `[img_K] caption` lines
    in the order of `images`, after the body."""

    text: str
    images: list[tuple[str, Image.Image]] = field(default_factory=list)


# ---- the tool class -----------------------------------------------------------------------------------------
class Tool(ABC):
    name: str = ""
    description: str = ""
    cacheable: bool = True  # False for tools cheaper than a cache lookup (zoom)
    needs_backend: bool = False  # True when the tool is constructed with a SearchBackend it calls
    returns_images: bool = False  # True when results are images (refused once the trajectory's image budget is spent)

    @abstractmethod
    def parameters_schema(self) -> dict:
        """JSON schema of the arguments (the `parameters` of the OpenAI function schema)."""

    def schema(self) -> dict:
        """OpenAI function schema, as listed to the model inside `<tools>...</tools>`."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters_schema()},
        }

    @abstractmethod
    def canonicalize(self, arguments: dict) -> dict:
        """Validate + normalise arguments; raises ToolArgumentError(message naming the problem and the fix)."""

    @abstractmethod
    async def execute(self, params: dict, ctx: ToolContext) -> ToolResult:
        """Do the work for canonical `params`. Raise ToolError / SearchError on failure."""

    async def cache_key(self, params: dict, ctx: ToolContext) -> dict:
        """What determines the result besides the tool name. Image refs are trajectory-local, so tools that
        read an image replace the ref by a digest of the image's pixels (`ToolContext.image_digest`)."""
        return params

    def render(self, result: ToolResult, ctx: ToolContext) -> ToolOutput:
        refs = [(ctx.add_image(image), caption, image) for caption, image in result.images]
        # Labels in backend text ("[img_2]" in a page title) are unbracketed: the `[img_K]` a placeholder goes
        # after must be the one written here.
        lines = [unlabel(result.text)] if result.text else []
        lines += [f"[{ref}] {unlabel(caption)}".rstrip() for ref, caption, _ in refs]
        return ToolOutput(text="\n".join(lines), images=[(ref, image) for ref, _, image in refs])

    async def run(self, params: dict, ctx: ToolContext) -> ToolOutput:
        return self.render(await self.execute(params, ctx), ctx)

    async def close(self) -> None:
        return None


_LABEL = re.compile(r"\[(img_\d+)\]")


def unlabel(text: str) -> str:
    """`text` with every image label `[img_K]` written as `(img_K)`."""
    return _LABEL.sub(r"(\1)", text)


def check_result(result: ToolResult, tool: str) -> ToolResult:
    """`result` if it can be shown and cached (lone surrogates replaced); a ToolError naming the problem otherwise.

    Run on every fresh result before it is cached: a result that fails later (a 0x0 image cannot be resized)
    would otherwise be served from the cache, and fail, on every call with the same parameters."""
    if not isinstance(result, ToolResult) or not isinstance(result.text, str):
        raise ToolError(f"{tool}: the backend returned no result text", "bad_response")
    images = []
    for item in result.images:
        caption, image = item if isinstance(item, tuple) and len(item) == 2 else (None, None)
        if not isinstance(caption, str) or not isinstance(image, Image.Image):
            raise ToolError(
                f"{tool}: the backend returned an image entry that is not (caption, image)", "bad_response"
            )
        if min(image.size) < 1:
            raise ToolError(f"{tool}: the backend returned an empty {image.width}x{image.height} image", "bad_image")
        images.append((replace_surrogates(caption), image))
    return ToolResult(text=replace_surrogates(result.text), images=images)


# ---- argument helpers shared by the tools -------------------------------------------------------------------
def check_keys(arguments: Any, tool: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(arguments, dict):
        raise ToolArgumentError(f"{tool}: arguments must be a JSON object, got {type(arguments).__name__}")
    missing = [k for k in required if k not in arguments]
    if missing:
        raise ToolArgumentError(f"{tool}: missing argument(s) {', '.join(missing)}")
    extra = sorted(k for k in arguments if k not in required and k not in optional)
    if extra:
        allowed = ", ".join(required + optional)
        raise ToolArgumentError(f"{tool}: unknown argument(s) {', '.join(map(str, extra))} (allowed: {allowed})")
    return arguments


def canonical_image_ref(value: Any, tool: str) -> str:
    if not isinstance(value, str) or not IMAGE_REF.match(value.strip()):
        raise ToolArgumentError(f"{tool}: 'image' must be an image reference like \"img_0\", got {value!r}")
    return value.strip()


def canonical_bbox(value: Any, tool: str) -> list[int]:
    """[x1, y1, x2, y2] integers in 0..1000 (relative to the image's width/height), x1 < x2 and y1 < y2.
    Integral floats (12.0) are accepted as integers; anything else is refused rather than rounded."""
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise ToolArgumentError(
            f"{tool}: 'bbox' must be a list [x1, y1, x2, y2] of 4 integers in 0-1000, got {value!r}"
        )
    coords = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and not v.is_integer()):
            raise ToolArgumentError(f"{tool}: 'bbox' coordinates must be integers in 0-1000, got {v!r}")
        coords.append(int(v))
    if any(c < 0 or c > 1000 for c in coords):
        # Huge values shown abbreviated: str() of an int over 4,300 digits raises ValueError.
        shown = ", ".join(str(c) if abs(c) < 10**9 else "(huge)" for c in coords)
        raise ToolArgumentError(f"{tool}: 'bbox' [{shown}] is outside the image: coordinates are relative, 0-1000")
    x1, y1, x2, y2 = coords
    if x1 >= x2 or y1 >= y2:
        raise ToolArgumentError(f"{tool}: 'bbox' {coords} is empty: it needs x1 < x2 and y1 < y2")
    return coords


def bbox_to_pixels(bbox: list[int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box (left, upper, right, lower) covering the relative bbox; at least one pixel each way."""
    width, height = size
    x1, y1, x2, y2 = bbox
    left, upper = x1 * width // 1000, y1 * height // 1000
    right, lower = -(-x2 * width // 1000), -(-y2 * height // 1000)
    return left, upper, max(right, left + 1), max(lower, upper + 1)


def image_digest(image: Image.Image) -> str:
    """sha256 of mode, size and pixels: equal digests mean equal images, wherever they came from."""
    h = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()
