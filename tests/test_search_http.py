"""The HTTP search service and its client on a real loopback server: results equal the local index's, and the
security model (loopback default, bearer token, body size, no file paths, field validation, bounded concurrency)."""

import asyncio
import base64
import io

import aiohttp
import numpy as np
import pytest
from _search_tools_helpers import TEXTS, emblem, image_rows, serve_app

from openrlhf_tapo.search.base import SearchError
from openrlhf_tapo.search.http_client import HttpSearchBackend
from openrlhf_tapo.search.http_common import HttpSettings
from openrlhf_tapo.search.http_service import SearchService, ServiceConfig, is_loopback, start_service
from openrlhf_tapo.search.local_index import LocalIndex, LocalIndexBackend
from openrlhf_tapo.tools import ToolContext, build_tool_runner


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return LocalIndex.build(TEXTS, image_rows(), tmp_path_factory.mktemp("http") / "index")


def png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


JSON_TYPE = {"Content-Type": "application/json"}


async def post(url, path, body=None, *, data=None, headers=None):
    async with aiohttp.ClientSession() as s, s.post(url + path, json=body, data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def test_client_results_equal_local_backend(index):
    async with serve_app(SearchService(index).app()) as url:
        remote, local = HttpSearchBackend(url), LocalIndexBackend(index)
        assert (await remote.health())["passages"] == 4
        for query in ("tower in Paris", "Rome amphitheatre", "nothing matches zzz"):
            assert await remote.text_search(query, 3) == await local.text_search(query, 3)
        r_hits, l_hits = await remote.image_search(emblem(5), 3), await local.image_search(emblem(5), 3)
        assert [(h.id, h.title, h.url, h.score) for h in r_hits] == [(h.id, h.title, h.url, h.score) for h in l_hits]
        for a, b in zip(r_hits, l_hits, strict=True):  # the stored JPEG bytes travel as they are
            assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        status, body = await post(url, "/v1/image_search", {"image_id": "img7", "top_k": 1})
        assert status == 200 and body["hits"][0]["id"] == "img7"
        await remote.close()


async def test_tool_runner_over_http_backend(index, monkeypatch):
    monkeypatch.setenv("TAPO_TEST_TOKEN", "s3cret")
    async with serve_app(SearchService(index, ServiceConfig(token="s3cret")).app()) as url:
        runner = build_tool_runner({"backend": {"kind": "http", "url": url, "token_env": "TAPO_TEST_TOKEN"}})
        ctx = ToolContext(images={"img_0": emblem(2)})
        text = await runner.call("text_search", {"query": "London bell"}, ctx)
        image = await runner.call("image_search", {}, ctx)
        assert text.error is None and text.text.startswith("1. Big Ben")
        assert image.error is None and image.text.splitlines()[1] == "[img_1] Emblem 2 (URL: https://img/2)"
        await runner.close()


async def test_binds_loopback_by_default_and_refuses_open_remote(index):
    assert ServiceConfig().host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    runner, port = await start_service(index, ServiceConfig(port=0))
    try:
        assert runner.addresses[0][0] == "127.0.0.1" and port > 0
    finally:
        await runner.cleanup()
    with pytest.raises(ValueError, match="without a token"):
        await start_service(index, ServiceConfig(host="0.0.0.0", port=0))


async def test_token_required_when_set(index):
    async with serve_app(SearchService(index, ServiceConfig(token="tok")).app()) as url:
        body = {"query": "Paris", "top_k": 1}
        assert (await post(url, "/v1/text_search", body))[0] == 401
        assert (await post(url, "/v1/text_search", body, headers={"Authorization": "Bearer nope"}))[0] == 401
        assert (await post(url, "/v1/text_search", body, headers={"Authorization": "tok"}))[0] == 401
        status, out = await post(url, "/v1/text_search", body, headers={"Authorization": "Bearer tok"})
        assert status == 200 and out["hits"][0]["id"] in ("eiffel", "louvre")
        client = HttpSearchBackend(url, token="wrong", settings=HttpSettings(attempts=1))
        with pytest.raises(SearchError) as err:
            await client.text_search("Paris", 1)
        await client.close()
        assert err.value.kind == "auth" and "wrong" not in str(err.value)


async def test_oversized_body_rejected(index):
    async with serve_app(SearchService(index, ServiceConfig(max_body_bytes=10_000)).app()) as url:
        status, out = await post(url, "/v1/text_search", {"query": "a " * 20_000, "top_k": 1})
        assert status == 413 and "limit" in out["error"]

        async def chunked():  # no Content-Length header: the limit must hold while reading
            yield b'{"query": "x", "pad": "' + b"a" * 30_000 + b'"}'

        async with (
            aiohttp.ClientSession() as s,
            s.post(url + "/v1/text_search", data=chunked(), headers=JSON_TYPE) as r,
        ):
            assert r.status == 413


async def test_path_like_image_fields_are_never_read(index, tmp_path, monkeypatch):
    secret = tmp_path / "secret.png"
    emblem(3).save(secret)
    opened = []
    real_open = open

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy_open)
    async with serve_app(SearchService(index).app()) as url:
        for value in (str(secret), f"file://{secret}", "../../etc/passwd", "https://example.com/a.png"):
            status, out = await post(url, "/v1/image_search", {"image": value, "top_k": 1})
            assert status == 400 and "file paths and URLs are never read" in out["error"]
    assert not any("secret" in f or "passwd" in f for f in opened)


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/v1/text_search", {"query": "x", "top_k": 0}, "top_k must be an integer in 1..50"),
        ("/v1/text_search", {"query": "x", "top_k": 51}, "top_k must be an integer in 1..50"),
        ("/v1/text_search", {"query": "x", "top_k": True}, "top_k must be an integer"),
        ("/v1/text_search", {"query": "x", "top_k": "3"}, "top_k must be an integer"),
        ("/v1/text_search", {"query": 3}, "query must be a non-empty string"),
        ("/v1/text_search", {"query": "   "}, "query must be a non-empty string"),
        ("/v1/text_search", {"query": "x" * 1025}, "longer than 1024"),
        ("/v1/text_search", {"query": "x", "path": "/etc"}, "unknown field(s): path"),
        ("/v1/text_search", {}, "missing field(s): query"),
        ("/v1/text_search", [1, 2], "body must be a JSON object"),
        ("/v1/image_search", {"top_k": 1}, "exactly one of image"),
        ("/v1/image_search", {"image": png_b64(emblem(1)), "image_id": "img1"}, "exactly one of image"),
        ("/v1/image_search", {"image_id": "nope"}, "is not in this index"),
        ("/v1/image_search", {"image_id": "x" * 300}, "image_id must be a string"),
        ("/v1/image_search", {"image": 12}, "image must be a base64 string"),
        ("/v1/image_search", {"image": base64.b64encode(b"\x89PNG\r\n\x1a\ngarbage").decode()}, "cannot decode"),
        ("/v1/image_search", {"image": base64.b64encode(b"%!PS-Adobe-3.0 EPSF").decode()}, "never read"),
    ],
)
async def test_request_validation(index, path, body, message):
    async with serve_app(SearchService(index).app()) as url:
        status, out = await post(url, path, body)
        assert status == 400 and message in out["error"]


async def test_image_pixel_and_byte_limits(index):
    config = ServiceConfig(max_image_pixels=64 * 64, max_image_bytes=50_000)
    async with serve_app(SearchService(index, config).app()) as url:
        status, out = await post(url, "/v1/image_search", {"image": png_b64(emblem(1, 96))})
        assert status == 400 and "over the 4096-pixel limit" in out["error"]
        noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
        from PIL import Image

        status, out = await post(url, "/v1/image_search", {"image": png_b64(Image.fromarray(noise))})
        assert status == 400 and "the limit is 50000" in out["error"]
        status, out = await post(url, "/v1/text_search", data=b"\xff\xfe not json", headers=JSON_TYPE)
        assert status == 400 and "UTF-8 JSON" in out["error"]


async def test_concurrency_is_bounded(index, monkeypatch):
    service = SearchService(index, ServiceConfig(max_concurrency=1, max_pending=1))
    running, peak = 0, 0
    real = index.search_text

    def slow(query, top_k):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        import time

        time.sleep(0.1)
        running -= 1
        return real(query, top_k)

    monkeypatch.setattr(index, "search_text", slow)
    async with serve_app(service.app()) as url:
        statuses = await asyncio.gather(*(post(url, "/v1/text_search", {"query": "Paris"}) for _ in range(6)))
    codes = sorted(s for s, _ in statuses)
    assert peak == 1 and codes.count(200) >= 2 and 503 in codes
    assert all(out["error"] == "service busy, retry later" for s, out in statuses if s == 503)


async def test_serve_search_cli_one_command(index, monkeypatch):
    import os
    import signal
    import sys

    env = {**os.environ, "SVC_TOKEN": "t0k"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "openrlhf_tapo.cli.serve_search", "--index", str(index.directory), "--port", "0",
        "--token-env", "SVC_TOKEN", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("serving ") and "http://127.0.0.1:" in line
        url = line.split()[-1]
        client = HttpSearchBackend(url, token="t0k")
        assert (await client.text_search("Mona Lisa", 1))[0].id == "louvre"
        await client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
