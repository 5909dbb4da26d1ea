"""Shared fixtures-as-functions for the tools/search tests (imported by plain name: tests/ is not a package)."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
from aiohttp import web
from PIL import Image, ImageDraw

from openrlhf_tapo.search.base import ImageHit, SearchBackend, TextHit

TEXTS = [
    {
        "id": "eiffel",
        "title": "Eiffel Tower",
        "text": "The Eiffel Tower is a wrought-iron tower in Paris.",
        "url": "u/1",
    },
    {
        "id": "colosseum",
        "title": "Colosseum",
        "text": "The Colosseum is an ancient amphitheatre in Rome.",
        "url": "u/2",
    },
    {"id": "louvre", "title": "Louvre", "text": "The Louvre museum in Paris holds the Mona Lisa.", "url": "u/3"},
    {"id": "bigben", "title": "Big Ben", "text": "Big Ben is the bell of the clock tower in London.", "url": "u/4"},
]


def emblem(seed: int, size: int = 96) -> Image.Image:
    """A structured synthetic picture (shapes on a background) distinct per seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x1, y1 = (int(v) for v in rng.integers(0, size // 2, 2))
        x2, y2 = x1 + int(rng.integers(10, size // 2)), y1 + int(rng.integers(10, size // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x1, y1, x2, y2], fill=colour)
    return image


def image_rows(n: int = 12) -> list[dict]:
    return [{"id": f"img{i}", "title": f"Emblem {i}", "url": f"https://img/{i}", "image": emblem(i)} for i in range(n)]


def gradient(width: int = 200, height: int = 100) -> Image.Image:
    """Pixel (x, y) = (x % 256, y % 256, 7): crops can be checked pixel by pixel."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    arr = np.stack([xs % 256, ys % 256, np.full_like(xs, 7)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


class FakeBackend(SearchBackend):
    """Deterministic backend with a configurable latency and failure, counting calls."""

    name = "fake"

    def __init__(self, latency: float = 0.0, fail: Exception | None = None, n_images: int = 3):
        self.latency, self.fail, self.n_images = latency, fail, n_images
        self.text_calls = 0
        self.image_calls = 0
        self.in_flight = self.max_in_flight = 0

    async def text_search(self, query, top_k):
        self.text_calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        if self.fail:
            raise self.fail
        return [
            TextHit(title=f"T{i} {query}", url=f"https://x/{i}", text=f"passage {i} about {query}")
            for i in range(top_k)
        ]

    async def image_search(self, image, top_k, *, image_url=None):
        self.image_calls += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.fail:
            raise self.fail
        return [ImageHit(title=f"I{i}", url=f"https://i/{i}", image=emblem(100 + i, 40)) for i in range(self.n_images)]


@contextlib.asynccontextmanager
async def serve_app(app: web.Application):
    """Run an aiohttp app on 127.0.0.1 (a free port); yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def cache_writer(path: str, worker: int, n: int) -> int:
    """Process target for the concurrent-writer test: n puts (half shared keys, half own), then n gets."""
    from openrlhf_tapo.tools.base import ToolResult
    from openrlhf_tapo.tools.cache import ToolCache

    cache = ToolCache(path, busy_timeout_s=60)
    for i in range(n):
        key = {"query": f"shared {i}"} if i % 2 == 0 else {"query": f"own {worker} {i}"}
        cache.put_sync("text_search", key, ToolResult(text=f"result for {key['query']}"))
    found = sum(cache.get_sync("text_search", {"query": f"shared {i}"}) is not None for i in range(0, n, 2))
    cache.close()
    return found


def inherited_cache_put(cache, query: str) -> None:
    """Process target: write through a ToolCache object created (and used) in the parent before fork()."""
    from openrlhf_tapo.tools.base import ToolResult

    cache.put_sync("text_search", {"query": query}, ToolResult(text=f"from child {query}"))
    assert cache.get_sync("text_search", {"query": "parent"}).text == "from parent"
    cache.close()
