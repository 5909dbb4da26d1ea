"""Every bad input and failure through ToolRunner.call: a ToolOutput with a readable error and its kind, counted;
nothing raises."""

import asyncio
import base64

import pytest
from _search_tools_helpers import FakeBackend, emblem, serve_app
from aiohttp import web

from openrlhf_tapo.search.base import SearchBadImage
from openrlhf_tapo.search.http_client import HttpSearchBackend
from openrlhf_tapo.search.http_common import HttpSettings
from openrlhf_tapo.tools import ToolContext, ToolRunner, ToolsConfig
from openrlhf_tapo.tools.registry import build_tools


def make_runner(backend, **overrides):
    config = ToolsConfig.from_dict(overrides)
    return ToolRunner(build_tools(config, backend), config)


def ctx():
    return ToolContext(images={"img_0": emblem(0)})


@pytest.mark.parametrize(
    "name, arguments, kind, says",
    [
        ("web_browse", {"url": "x"}, "unknown_tool", "unknown tool 'web_browse'; available tools: image_search"),
        (None, {}, "unknown_tool", "unknown tool None"),
        (["text_search"], {}, "unknown_tool", "unknown tool ['text_search']"),
        ("text_search", "{not json", "bad_json", "arguments are not valid JSON"),
        ("text_search", "[1, 2]", "bad_arguments", "arguments must be a JSON object, got list"),
        ("text_search", {}, "bad_arguments", "missing argument(s) query"),
        ("text_search", {"query": "a", "top_k": 50}, "bad_arguments", "unknown argument(s) top_k (allowed: query)"),
        ("text_search", {"query": ["a"]}, "bad_arguments", "'query' must be a string, got list"),
        ("text_search", {"query": "  \n "}, "bad_arguments", "'query' is empty"),
        ("text_search", {"query": "x" * 513}, "bad_arguments", "has 513 characters, the limit is 512"),
        ("zoom", {"image": "img_0"}, "bad_arguments", "missing argument(s) bbox"),
        ("zoom", {"image": 0, "bbox": [0, 0, 9, 9]}, "bad_arguments", "'image' must be an image reference"),
        ("zoom", {"image": "img_0", "bbox": "0,0,9,9"}, "bad_arguments", "'bbox' must be a list [x1, y1, x2, y2]"),
        ("zoom", {"image": "img_0", "bbox": [0, 0, 9]}, "bad_arguments", "'bbox' must be a list"),
        ("zoom", {"image": "img_0", "bbox": [0, 0, True, 9]}, "bad_arguments", "coordinates must be integers"),
        ("zoom", {"image": "img_0", "bbox": [0, 0, 1001, 9]}, "bad_arguments", "is outside the image"),
        ("zoom", {"image": "img_0", "bbox": [-5, 0, 10, 9]}, "bad_arguments", "is outside the image"),
        ("zoom", {"image": "img_0", "bbox": [500, 0, 500, 9]}, "bad_arguments", "is empty: it needs x1 < x2"),
        ("zoom", {"image": "img_0", "bbox": [0, 9, 10, 2]}, "bad_arguments", "is empty"),
        ("zoom", {"image": "img_7", "bbox": [0, 0, 9, 9]}, "image_ref", "image 'img_7' does not exist"),
        ("image_search", {"image": "img_3"}, "image_ref", "(available: img_0)"),
        ("image_search", {"image": "img_0", "bbox": [0, 0, 0, 0]}, "bad_arguments", "is empty"),
    ],
)
async def test_bad_calls(name, arguments, kind, says):
    runner = make_runner(FakeBackend())
    out = await runner.call(name, arguments, ctx())
    assert out.error == kind and out.text.startswith("Error: ") and says in out.text
    assert out.images == [] and not out.cached
    assert runner.stats()[f"errors/{kind}"] == 1
    if kind in ("bad_json", "bad_arguments", "unknown_tool"):
        assert out.params is None
    else:
        assert out.params is not None  # arguments validated; the call failed later


@pytest.mark.parametrize(
    "failure, kind",
    [
        (SearchBadImage("cannot decode image (UnidentifiedImageError)"), "bad_image"),
        (RuntimeError("kaboom"), "internal"),
        (ValueError("weird"), "internal"),
    ],
)
async def test_backend_exceptions_become_errors(failure, kind):
    out = await make_runner(FakeBackend(fail=failure)).call("image_search", {}, ctx())
    assert out.error == kind
    if kind == "internal":  # an unexpected exception's text may hold a secret: only its type is shown
        assert type(failure).__name__ in out.text and str(failure) not in out.text
    else:
        assert str(failure) in out.text


async def test_backend_timeout():
    runner = make_runner(FakeBackend(latency=5.0), timeout_s=0.1)
    outs = await asyncio.gather(*(runner.call("text_search", {"query": f"q{i}"}, ctx()) for i in range(5)))
    assert {o.error for o in outs} == {"timeout"} and "took longer than 0.1 s" in outs[0].text
    assert runner.stats()["errors/timeout"] == 5


async def test_cancellation_propagates():
    runner = make_runner(FakeBackend(latency=5.0))
    task = asyncio.create_task(runner.call("text_search", {"query": "q"}, ctx()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class FailingService:
    """A fake search service: answers with a scripted status/body per request."""

    def __init__(self):
        self.script: list = []
        self.count = 0

    def app(self):
        app = web.Application()
        app.router.add_post("/v1/text_search", self.handle)
        app.router.add_post("/v1/image_search", self.handle)
        return app

    async def handle(self, request):
        self.count += 1
        status, body = self.script.pop(0) if self.script else (200, b'{"hits": []}')
        return web.Response(status=status, body=body, headers={"Retry-After": "0"})


@pytest.mark.parametrize(
    "script, tool, kind, says",
    [
        ([(503, b"")] * 3, "text_search", "backend", "search service failed (HTTP 503)"),
        ([(429, b"")] * 3, "text_search", "rate_limited", "rate limit exceeded (HTTP 429)"),
        ([(500, b""), (200, b'{"hits": []}')], "text_search", None, 'No results for "q"'),
        ([(200, b'{"hits": [' + b'{"a": 1},' * 100_000 + b"{}]}")], "text_search", "bad_response", "byte limit"),
        ([(200, b'{"hits": "caf\xe9"}')], "text_search", "bad_response", "not UTF-8"),
        ([(200, b'{"results": []}')], "text_search", "bad_response", "lacks a 'hits' list"),
        (
            [(200, b'{"hits": [{"title": "t", "url": "u", "image": "!!"}]}')],
            "image_search",
            "bad_response",
            "not base64",
        ),
        (
            [(200, b'{"hits": [{"title": "t", "url": "u", "image": "' + base64.b64encode(b"GIF89a junk") + b'"}]}')],
            "image_search",
            "bad_image",
            "cannot decode image",
        ),
    ],
)
async def test_http_failures(script, tool, kind, says):
    service = FailingService()
    service.script = list(script)
    async with serve_app(service.app()) as url:
        settings = HttpSettings(attempts=3, backoff_s=0.01, max_backoff_s=0.02, max_response_bytes=200_000)
        runner = make_runner(HttpSearchBackend(url, settings=settings))
        args = {"query": "q"} if tool == "text_search" else {}
        out = await runner.call(tool, args, ctx())
        await runner.close()
    assert out.error == kind and says in out.text
    if kind in ("backend", "rate_limited"):
        assert service.count == 3  # retried up to the attempt limit


async def test_unreachable_service():
    runner = make_runner(HttpSearchBackend("http://127.0.0.1:9", settings=HttpSettings(attempts=2, backoff_s=0.01)))
    out = await runner.call("text_search", {"query": "q"}, ctx())
    await runner.close()
    assert out.error == "backend" and "connection failed" in out.text and "127.0.0.1" not in out.text


async def test_errors_do_not_disturb_other_trajectories():
    runner = make_runner(FakeBackend())
    good, bad, good2 = await asyncio.gather(
        runner.call("text_search", {"query": "fine"}, ctx()),
        runner.call("zoom", {"image": "img_9", "bbox": [0, 0, 9, 9]}, ctx()),
        runner.call("zoom", {"image": "img_0", "bbox": [0, 0, 500, 500]}, ctx()),
    )
    assert good.error is None and bad.error == "image_ref" and good2.error is None
    stats = runner.stats()
    assert stats["calls/text_search"] == 1 and stats["calls/zoom"] == 2 and stats["errors/image_ref"] == 1
