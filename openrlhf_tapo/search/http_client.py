"""`HttpSearchBackend`: the client of the search service (http_service.py), used by every rollout worker."""

from __future__ import annotations

import base64
import binascii
import os

from PIL import Image

from openrlhf_tapo.search.base import ImageHit, SearchBackend, SearchBadResponse, SearchError, TextHit
from openrlhf_tapo.search.http_common import HttpJsonClient, HttpSettings
from openrlhf_tapo.search.images import decode_image, encode_image
from openrlhf_tapo.search.workers import run_cpu


class HttpSearchBackend(SearchBackend):
    name = "http"

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        settings: HttpSettings | None = None,
        max_image_pixels: int = 40_000_000,
    ):
        self.url = url.rstrip("/")
        self.max_image_pixels = max_image_pixels
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = HttpJsonClient("search service", settings or HttpSettings(), headers)

    @classmethod
    def from_config(cls, cfg) -> HttpSearchBackend:
        """From a tools.config.BackendConfig; the token is read from the environment variable it names."""
        token = None
        if cfg.token_env:
            token = os.environ.get(cfg.token_env)
            if not token:
                raise ValueError(f"tools.backend.token_env names {cfg.token_env}, which is not set")
        return cls(
            cfg.url, token=token, settings=HttpSettings.from_backend_config(cfg), max_image_pixels=cfg.max_image_pixels
        )

    async def text_search(self, query: str, top_k: int) -> list[TextHit]:
        data = await self.http.request_json(
            "POST", f"{self.url}/v1/text_search", json={"query": query, "top_k": top_k}
        )
        return [
            TextHit(
                title=h["title"], url=h["url"], text=h["text"], score=float(h.get("score", 0.0)), id=h.get("id", "")
            )
            for h in _hits(data, ("title", "url", "text"))[:top_k]
        ]

    async def image_search(self, image, top_k: int, *, image_url: str | None = None) -> list[ImageHit]:
        if isinstance(image, Image.Image):
            image = await run_cpu(encode_image, image, "PNG")
        if not isinstance(image, bytes | bytearray):
            raise SearchError(f"image must be bytes or a PIL image, got {type(image).__name__}", "bad_image")
        body = {"image": base64.b64encode(image).decode("ascii"), "top_k": top_k}
        data = await self.http.request_json("POST", f"{self.url}/v1/image_search", json=body)
        hits = _hits(data, ("title", "url", "image"))[:top_k]  # a service that returns more: decode only top_k
        return await run_cpu(self._decode_hits, hits)

    def _decode_hits(self, hits: list[dict]) -> list[ImageHit]:
        out = []
        for h in hits:
            try:
                data = base64.b64decode(h["image"], validate=True)
            except (binascii.Error, ValueError):
                raise SearchBadResponse("search service returned an image that is not base64") from None
            image = decode_image(data, max_pixels=self.max_image_pixels)
            out.append(ImageHit(h["title"], h["url"], image, float(h.get("score", 0.0)), h.get("id", "")))
        return out

    async def health(self) -> dict:
        return await self.http.request_json("GET", f"{self.url}/health")

    async def close(self) -> None:
        await self.http.close()


def _hits(data, fields: tuple[str, ...]) -> list[dict]:
    hits = data.get("hits") if isinstance(data, dict) else None
    if not isinstance(hits, list) or not all(
        isinstance(h, dict) and all(isinstance(h.get(f), str) for f in fields) for h in hits
    ):
        raise SearchBadResponse(f"search service response lacks a 'hits' list of {{{', '.join(fields)}}} objects")
    return hits
