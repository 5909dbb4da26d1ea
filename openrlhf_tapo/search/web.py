"""Web search backends: Serper (google.serper.dev) and SerpAPI (serpapi.com).

Text search uses each service's Google web search; image search uses its Google Lens endpoint, which takes a
public URL of the image (not its bytes): the tool passes the URL of the question image when the dataset gives one
(`ToolContext.image_urls`), otherwise the call fails with an `unsupported` error the model can read. Result
thumbnails are downloaded (size-limited, concurrently) and decoded in the CPU pool; a thumbnail that cannot be
downloaded or decoded is left out and counted in `thumbnail_failures`.

API keys are read from environment variables only (SERPER_API_KEY / SERPAPI_API_KEY by default, or the variable
named by `api_key_env`), held in memory, and never written to logs, errors, cache keys or rollouts: error
messages are built from the service name and the HTTP status only, and any message that came back from the
service is passed through `redact`.
"""

from __future__ import annotations

import asyncio
import logging
import os

from openrlhf_tapo.search.base import (
    ImageHit,
    SearchBackend,
    SearchBadResponse,
    SearchError,
    SearchUnsupported,
    TextHit,
)
from openrlhf_tapo.search.http_common import HttpJsonClient, HttpSettings
from openrlhf_tapo.search.images import decode_image
from openrlhf_tapo.search.workers import run_cpu

logger = logging.getLogger(__name__)


def api_key_from_env(var: str) -> str:
    key = os.environ.get(var, "").strip()
    if not key:
        raise ValueError(f"the web search backend needs an API key in the environment variable {var}, which is unset")
    return key


class _WebBackend(SearchBackend):
    service = ""
    default_endpoint = ""
    default_key_env = ""

    def __init__(
        self,
        api_key: str,
        *,
        endpoint: str | None = None,
        settings: HttpSettings | None = None,
        max_thumbnail_bytes: int = 4 << 20,
        max_image_pixels: int = 40_000_000,
    ):
        self._key = api_key
        self.endpoint = (endpoint or self.default_endpoint).rstrip("/")
        self.max_thumbnail_bytes = max_thumbnail_bytes
        self.max_image_pixels = max_image_pixels
        self.thumbnail_failures = 0
        self.http = HttpJsonClient(self.service, settings or HttpSettings(), self._auth_headers())

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(endpoint={self.endpoint!r})"

    @classmethod
    def from_config(cls, cfg) -> _WebBackend:
        """From a tools.config.BackendConfig (api_key_env, endpoint, timeouts, retries, rate limit)."""
        return cls(
            api_key_from_env(cfg.api_key_env or cls.default_key_env),
            endpoint=cfg.endpoint,
            settings=HttpSettings.from_backend_config(cfg),
            max_image_pixels=cfg.max_image_pixels,
        )

    def _auth_headers(self) -> dict[str, str]:
        return {}

    def redact(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text

    async def _thumbnails(self, items: list[tuple[str, str, str]], top_k: int) -> list[ImageHit]:
        """ImageHits for (title, page url, thumbnail url) items, in order, skipping failed thumbnails."""

        async def one(title: str, url: str, thumb: str) -> ImageHit | None:
            try:
                data = await self.http.get_bytes(thumb, self.max_thumbnail_bytes)
                image = await run_cpu(decode_image, data, max_pixels=self.max_image_pixels)
            except SearchError as err:
                self.thumbnail_failures += 1
                logger.debug("%s thumbnail skipped: %s", self.service, err)
                return None
            return ImageHit(title=title, url=url, image=image)

        items = [it for it in items if it[2].startswith(("http://", "https://"))]
        hits = await asyncio.gather(*(one(*it) for it in items[:top_k]))
        found = [h for h in hits if h is not None]
        if items and not found:
            raise SearchError(f"{self.service}: none of the result images could be downloaded", "backend")
        return found

    async def close(self) -> None:
        await self.http.close()


def _str(item: dict, *keys: str) -> str:
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _items(data, key: str, service: str) -> list[dict]:
    if not isinstance(data, dict):
        raise SearchBadResponse(f"{service} response is not a JSON object")
    items = data.get(key, [])
    if not isinstance(items, list):
        raise SearchBadResponse(f"{service} response field '{key}' is not a list")
    return [it for it in items if isinstance(it, dict)]


class SerperBackend(_WebBackend):
    """POST {endpoint}/search {"q", "num"} -> {"organic": [{title, link, snippet}]};
    POST {endpoint}/lens {"url"} -> {"organic": [{title, link, source, imageUrl, thumbnailUrl}]}."""

    name = "serper"
    service = "Serper"
    default_endpoint = "https://google.serper.dev"
    default_key_env = "SERPER_API_KEY"

    def _auth_headers(self) -> dict[str, str]:
        return {"X-API-KEY": self._key}

    async def text_search(self, query: str, top_k: int) -> list[TextHit]:
        data = await self.http.request_json("POST", f"{self.endpoint}/search", json={"q": query, "num": top_k})
        hits = []
        for item in _items(data, "organic", self.service)[:top_k]:
            hits.append(TextHit(title=_str(item, "title"), url=_str(item, "link"), text=_str(item, "snippet")))
        return hits

    async def image_search(self, image, top_k: int, *, image_url: str | None = None) -> list[ImageHit]:
        if not image_url:
            raise SearchUnsupported(f"{self.service} image search needs a public URL of the image; none is known")
        data = await self.http.request_json("POST", f"{self.endpoint}/lens", json={"url": image_url})
        items = [
            (_str(it, "title"), _str(it, "link"), _str(it, "thumbnailUrl", "imageUrl"))
            for it in _items(data, "organic", self.service)
        ]
        return await self._thumbnails(items, top_k)


class SerpApiBackend(_WebBackend):
    """GET {endpoint}/search.json?engine=google&q&num&api_key -> {"organic_results": [{title, link, snippet}]};
    GET ...?engine=google_lens&url&api_key -> {"visual_matches": [{title, link, source, thumbnail, image}]}.
    SerpAPI reports failures as {"error": "..."}; "no results" errors become an empty list."""

    name = "serpapi"
    service = "SerpAPI"
    default_endpoint = "https://serpapi.com"
    default_key_env = "SERPAPI_API_KEY"

    async def _get(self, params: dict) -> dict:
        data = await self.http.request_json(
            "GET", f"{self.endpoint}/search.json", params={**params, "api_key": self._key}
        )
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            message = data["error"]
            if "hasn't returned any results" in message or "no results" in message.lower():
                return {}
            raise SearchError(f"{self.service} error: {self.redact(message)[:300]}", "backend")
        return data

    async def text_search(self, query: str, top_k: int) -> list[TextHit]:
        data = await self._get({"engine": "google", "q": query, "num": top_k})
        hits = []
        for item in _items(data, "organic_results", self.service)[:top_k]:
            hits.append(TextHit(title=_str(item, "title"), url=_str(item, "link"), text=_str(item, "snippet")))
        return hits

    async def image_search(self, image, top_k: int, *, image_url: str | None = None) -> list[ImageHit]:
        if not image_url:
            raise SearchUnsupported(f"{self.service} image search needs a public URL of the image; none is known")
        data = await self._get({"engine": "google_lens", "url": image_url})
        items = [
            (_str(it, "title"), _str(it, "link"), _str(it, "thumbnail", "image"))
            for it in _items(data, "visual_matches", self.service)
        ]
        return await self._thumbnails(items, top_k)
