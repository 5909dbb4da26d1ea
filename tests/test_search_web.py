"""Serper and SerpAPI clients against a fake server on 127.0.0.1 speaking their documented response shapes:
parsing, auth placement, Lens thumbnails, retries on 429/5xx, timeouts, size/encoding limits, key hygiene."""

import asyncio
import io
from types import SimpleNamespace

import pytest
from _search_tools_helpers import emblem, serve_app
from aiohttp import web

from openrlhf_tapo.search import http_common
from openrlhf_tapo.search.base import SearchError
from openrlhf_tapo.search.http_common import HttpSettings, TokenBucket
from openrlhf_tapo.search.web import SerpApiBackend, SerperBackend
from openrlhf_tapo.tools import ToolContext, ToolsConfig, build_tool_runner

KEY = "KEY-abc123-secret"
FAST = HttpSettings(timeout_s=2.0, attempts=3, backoff_s=0.01, max_backoff_s=0.02)


def png(seed):
    buf = io.BytesIO()
    emblem(seed, 48).save(buf, format="PNG")
    return buf.getvalue()


class FakeApis:
    """Serper (POST /search, POST /lens, X-API-KEY) and SerpAPI (GET /search.json?api_key=) in one app."""

    def __init__(self):
        self.requests = []
        self.fail_next: list[int] = []  # statuses to answer before succeeding
        self.mode = "ok"
        self.base = ""

    def app(self):
        app = web.Application()
        app.router.add_post("/search", self.serper_search)
        app.router.add_post("/lens", self.serper_lens)
        app.router.add_get("/search.json", self.serpapi)
        app.router.add_get("/thumb/{n}.png", self.thumb)
        return app

    async def _gate(self, request):
        self.requests.append(request)
        if self.fail_next:
            status = self.fail_next.pop(0)
            return web.Response(status=status, text="busy", headers={"Retry-After": "0"})
        if self.mode == "slow":
            await asyncio.sleep(1.0)
        if self.mode == "huge":
            return web.Response(body=b'{"organic": [' + b'{"title": "x"},' * 200_000 + b"{}]}")
        if self.mode == "huge_stream":  # chunked, no Content-Length: the limit applies while reading
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(50):
                await resp.write(b" " * 10_000)
            await resp.write_eof()
            return resp
        if self.mode == "latin1":
            return web.Response(body='{"organic": [{"title": "caf\xe9"}]}'.encode("latin-1"))
        if self.mode == "notjson":
            return web.Response(text="<html>oops</html>")
        return None

    async def serper_search(self, request):
        if (r := await self._gate(request)) is not None:
            return r
        if request.headers.get("X-API-KEY") != KEY:
            return web.json_response({"message": "Unauthorized."}, status=403)
        body = await request.json()
        organic = [
            {
                "title": f"Result {i} for {body['q']}",
                "link": f"https://site/{i}",
                "snippet": f"Snippet {i}.",
                "position": i,
            }
            for i in range(1, 8)
        ]
        return web.json_response({"searchParameters": {"q": body["q"], "type": "search"}, "organic": organic})

    async def serper_lens(self, request):
        if (r := await self._gate(request)) is not None:
            return r
        body = await request.json()
        assert body == {"url": "https://public/q.png"}
        organic = [
            {
                "title": "Match A",
                "source": "A",
                "link": "https://a",
                "imageUrl": f"{self.base}/thumb/1.png",
                "thumbnailUrl": f"{self.base}/thumb/1.png",
            },
            {"title": "Broken", "source": "B", "link": "https://b", "thumbnailUrl": f"{self.base}/thumb/404.png"},
            {"title": "Match C", "source": "C", "link": "https://c", "thumbnailUrl": f"{self.base}/thumb/3.png"},
        ]
        return web.json_response({"searchParameters": {"url": body["url"], "type": "lens"}, "organic": organic})

    async def serpapi(self, request):
        if (r := await self._gate(request)) is not None:
            return r
        q = request.query
        if q.get("api_key") != KEY:
            return web.json_response({"error": "Invalid API key. Your API key should be here: ..."}, status=401)
        if q["engine"] == "google":
            if q["q"] == "empty":
                return web.json_response({"error": "Google hasn't returned any results for this query."})
            if q["q"] == "echo-key":
                return web.json_response({"error": f"Bad request for key {q['api_key']}"})
            organic = [
                {"position": i, "title": f"R{i}", "link": f"https://r/{i}", "snippet": f"S{i}"} for i in range(1, 4)
            ]
            return web.json_response({"search_metadata": {"status": "Success"}, "organic_results": organic})
        matches = [
            {
                "position": 1,
                "title": "Lens 1",
                "link": "https://l/1",
                "source": "l",
                "thumbnail": f"{self.base}/thumb/5.png",
            },
            {
                "position": 2,
                "title": "Lens 2",
                "link": "https://l/2",
                "source": "l",
                "thumbnail": f"{self.base}/thumb/6.png",
            },
        ]
        return web.json_response({"search_metadata": {"status": "Success"}, "visual_matches": matches})

    async def thumb(self, request):
        n = int(request.match_info["n"])
        if n == 404:
            return web.Response(status=404)
        return web.Response(body=png(n), content_type="image/png")


@pytest.fixture
async def fake():
    apis = FakeApis()
    async with serve_app(apis.app()) as url:
        apis.base = url
        yield apis


async def test_serper_text_and_lens(fake):
    backend = SerperBackend(KEY, endpoint=fake.base, settings=FAST)
    hits = await backend.text_search("eiffel tower", 3)
    assert [(h.title, h.url, h.text) for h in hits] == [
        (f"Result {i} for eiffel tower", f"https://site/{i}", f"Snippet {i}.") for i in (1, 2, 3)
    ]
    assert fake.requests[0].headers["X-API-KEY"] == KEY and KEY not in str(fake.requests[0].url)
    images = await backend.image_search(emblem(0), 3, image_url="https://public/q.png")
    assert [h.title for h in images] == ["Match A", "Match C"] and backend.thumbnail_failures == 1
    assert images[0].image.tobytes() == emblem(1, 48).tobytes()
    with pytest.raises(SearchError) as err:
        await backend.image_search(emblem(0), 3)
    assert err.value.kind == "unsupported"
    await backend.close()


async def test_serpapi_text_lens_and_errors(fake):
    backend = SerpApiBackend(KEY, endpoint=fake.base, settings=FAST)
    hits = await backend.text_search("q", 2)
    assert [(h.title, h.url, h.text) for h in hits] == [("R1", "https://r/1", "S1"), ("R2", "https://r/2", "S2")]
    assert fake.requests[0].query["engine"] == "google" and fake.requests[0].query["num"] == "2"
    assert await backend.text_search("empty", 2) == []
    with pytest.raises(SearchError) as err:
        await backend.text_search("echo-key", 2)
    assert KEY not in str(err.value) and "[redacted]" in str(err.value)
    images = await backend.image_search(emblem(0), 5, image_url="https://public/q.png")
    assert [h.title for h in images] == ["Lens 1", "Lens 2"] and images[1].image.size == (48, 48)
    await backend.close()
    bad = SerpApiBackend("wrong", endpoint=fake.base, settings=FAST)
    with pytest.raises(SearchError) as err:
        await bad.text_search("q", 1)
    assert err.value.kind == "auth" and "HTTP 401" in str(err.value)
    await bad.close()


async def test_retries_429_and_5xx_then_succeeds(fake):
    backend = SerperBackend(KEY, endpoint=fake.base, settings=FAST)
    fake.fail_next = [429, 503]
    hits = await backend.text_search("x", 1)
    assert len(hits) == 1 and backend.http.retries == 2 and len(fake.requests) == 3
    await backend.close()


@pytest.mark.parametrize("statuses, kind", [([500, 502, 503], "backend"), ([429, 429, 429], "rate_limited")])
async def test_gives_up_after_attempts(fake, statuses, kind):
    backend = SerperBackend(KEY, endpoint=fake.base, settings=FAST)
    fake.fail_next = list(statuses)
    with pytest.raises(SearchError) as err:
        await backend.text_search("x", 1)
    assert err.value.kind == kind and len(fake.requests) == 3 and KEY not in str(err.value)
    await backend.close()


@pytest.mark.parametrize(
    "mode, kind, text",
    [
        ("slow", "timeout", "did not answer within 0.3 s"),
        ("huge", "bad_response", "over the 100000-byte limit"),
        ("huge_stream", "bad_response", "over the 100000-byte limit"),
        ("latin1", "bad_response", "not UTF-8"),
        ("notjson", "bad_response", "not JSON"),
    ],
)
async def test_bad_responses(fake, mode, kind, text):
    settings = HttpSettings(timeout_s=0.3, attempts=1, max_response_bytes=100_000)
    backend = SerpApiBackend(KEY, endpoint=fake.base, settings=settings)
    fake.mode = mode
    with pytest.raises(SearchError) as err:
        await backend.text_search("x", 1)
    assert err.value.kind == kind and text in str(err.value) and KEY not in str(err.value)
    await backend.close()


async def test_keys_only_from_environment_and_never_shown(fake, monkeypatch, caplog):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    with pytest.raises(ValueError, match="SERPER_API_KEY, which is unset"):
        build_tool_runner({"backend": {"kind": "serper"}})
    monkeypatch.setenv("MY_SERPER", KEY)
    config = ToolsConfig.from_dict(
        {
            "backend": {
                "kind": "serper",
                "api_key_env": "MY_SERPER",
                "endpoint": fake.base,
                "timeout_s": 0.3,
                "retry": {"attempts": 2, "backoff_s": 0.01},
            }
        }
    )
    runner = build_tool_runner(config)
    backend = runner.tools["text_search"].backend
    assert KEY not in repr(backend) and KEY not in repr(config)
    ok = await runner.call("text_search", {"query": "hello"}, ToolContext())
    fake.fail_next = [500, 500]
    failed = await runner.call("text_search", {"query": "again"}, ToolContext())
    no_url = await runner.call("image_search", {}, ToolContext(images={"img_0": emblem(0)}))
    assert ok.error is None and failed.error == "backend" and no_url.error == "unsupported"
    assert "public URL" in no_url.text
    with_url = await runner.call(
        "image_search", {}, ToolContext(images={"img_0": emblem(0)}, image_urls={"img_0": "https://public/q.png"})
    )
    assert with_url.error is None and [r for r, _ in with_url.images] == ["img_1", "img_2"]
    for text in (ok.text, failed.text, no_url.text, with_url.text, caplog.text):
        assert KEY not in text
    await runner.close()


class VirtualClock:
    """`time.monotonic` and `asyncio.sleep` for http_common: sleeping advances the clock, nothing waits."""

    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_token_bucket_rate(monkeypatch):
    clock = VirtualClock()
    monkeypatch.setattr(http_common, "time", clock)
    monkeypatch.setattr(http_common, "asyncio", SimpleNamespace(sleep=clock.sleep, Lock=asyncio.Lock))
    bucket = TokenBucket(16.0)  # a power of two: every time below is exact in binary
    granted = []
    for _ in range(26):
        await bucket.acquire()
        granted.append(clock.now)
    # 16 tokens of burst at once, then one every 1/16 s
    assert granted == [0.0] * 16 + [k / 16 for k in range(1, 11)]
    # an idle spell refills the burst, never more
    clock.now += 100.0
    before = len(clock.slept)
    for _ in range(16):
        await bucket.acquire()
    assert len(clock.slept) == before
    await bucket.acquire()
    assert clock.slept[before:] == [1 / 16]
    unlimited = TokenBucket(0)
    for _ in range(1000):
        await unlimited.acquire()
    assert clock.slept[before:] == [1 / 16]
