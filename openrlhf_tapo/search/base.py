"""The search backend interface every backend (local index, HTTP service client, web APIs) implements.

Backends return hits; they never format observations (that is the tools' job) and signal every failure with a
`SearchError` whose `kind` the tool runner reports to the model and counts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class TextHit:
    title: str
    url: str
    text: str
    score: float = 0.0
    id: str = ""


@dataclass
class ImageHit:
    title: str
    url: str
    image: Image.Image
    score: float = 0.0
    id: str = ""
    extra: dict = field(default_factory=dict)


class SearchError(Exception):
    """A backend failure. `kind` is one of the tool error kinds (docs/tools.md): "timeout", "backend",
    "rate_limited", "bad_response", "bad_image", "unsupported", "auth"."""

    kind = "backend"

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class SearchTimeout(SearchError):
    kind = "timeout"


class SearchRateLimited(SearchError):
    kind = "rate_limited"


class SearchBadResponse(SearchError):
    kind = "bad_response"


class SearchBadImage(SearchError):
    kind = "bad_image"


class SearchUnsupported(SearchError):
    kind = "unsupported"


class SearchBackend(ABC):
    """Async search interface. `top_k` is configuration of the calling tool, never a model parameter."""

    name = "backend"

    @abstractmethod
    async def text_search(self, query: str, top_k: int) -> list[TextHit]: ...

    @abstractmethod
    async def image_search(
        self, image: bytes | Image.Image, top_k: int, *, image_url: str | None = None
    ) -> list[ImageHit]:
        """Search images similar to `image` (encoded bytes or a PIL image). Web reverse-image APIs need a
        public URL of the image instead of its bytes: they use `image_url` and raise `SearchUnsupported`
        without it."""

    async def close(self) -> None:
        """Release sessions and connections. Backends are usable as async context managers."""
        return None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
