"""Fault matrix, HTTP: abuse of the search service (real server on 127.0.0.1) and hostile answers to its client.

The service answers every bad request with a 4xx JSON error and no logged traceback, closes idle and half-open
connections, and stays healthy afterwards; the client turns every bad answer into a counted `SearchError` kind.
"""

import asyncio
import base64
import io
import json
import logging

import aiohttp
import pytest
from _search_tools_helpers import TEXTS, emblem, image_rows, serve_app
from aiohttp import web

from openrlhf_tapo.search.http_client import HttpSearchBackend
from openrlhf_tapo.search.http_common import HttpSettings
from openrlhf_tapo.search.http_service import ServiceConfig, start_service
from openrlhf_tapo.search.local_index import LocalIndex
from openrlhf_tapo.tools import ToolContext, ToolRunner, ToolsConfig
from openrlhf_tapo.tools.registry import build_tools

JSON = {"Content-Type": "application/json"}
HUGE_INT = "9" * 5000
TOKEN = "service-token-0123456789"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return LocalIndex.build(TEXTS, image_rows(4), tmp_path_factory.mktemp("faults_http") / "index")


@pytest.fixture
async def service(index):
    """A real service on a free loopback port with short timeouts; yields (base URL, port)."""
    config = ServiceConfig(port=0, idle_timeout_s=0.5, body_timeout_s=0.5, max_body_bytes=64 << 10)
    runner, port = await start_service(index, config)
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        await runner.cleanup()


async def request(url, method="POST", *, data=None, headers=None):
    async with aiohttp.ClientSession() as s, s.request(method, url, data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


def png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def no_traceback(caplog) -> bool:
    return not any(r.exc_info for r in caplog.records) and "Traceback" not in caplog.text


# ---- abuse of the service -----------------------------------------------------------------------------------
BAD_REQUESTS = [
    ("text_search", b"[" * 20_000 + b"]" * 20_000, JSON, 400, "JSON object"),
    ("text_search", b'{"query": "x", "top_k": ' + HUGE_INT.encode() + b"}", JSON, 400, "JSON object"),
    ("text_search", b'{"query": "\xff\xfe"}', JSON, 400, "UTF-8"),
    ("text_search", b"", JSON, 400, "JSON object"),
    ("text_search", b"[1, 2]", JSON, 400, "JSON object"),
    ("text_search", b'"just a string"', JSON, 400, "JSON object"),
    ("text_search", b'{"query": "x"} trailing', JSON, 400, "JSON object"),
    ("text_search", b'{"query": "x"}', {"Content-Type": "text/plain"}, 415, "application/json"),
    ("text_search", b'{"query": "x"}', {"Content-Type": "application/x-www-form-urlencoded"}, 415, "JSON"),
    ("text_search", b'{"query": "x"}', {"Content-Type": "multipart/form-data; boundary=x"}, 415, "JSON"),
    ("text_search", b'{"query": "x"}', {}, 415, "application/json"),
    ("text_search", b'{"query": "x", "evil": 1}', JSON, 400, "unknown field"),
    ("text_search", b"{}", JSON, 400, "missing field"),
    ("text_search", b'{"query": ""}', JSON, 400, "non-empty"),
    ("text_search", b'{"query": 5}', JSON, 400, "non-empty string"),
    ("text_search", json.dumps({"query": "x" * 5000}).encode(), JSON, 400, "longer than"),
    ("text_search", b'{"query": "x", "top_k": 0}', JSON, 400, "top_k"),
    ("text_search", b'{"query": "x", "top_k": 1e9}', JSON, 400, "top_k"),
    ("text_search", b'{"query": "x", "top_k": true}', JSON, 400, "top_k"),
    ("text_search", b'{"query": "x", "top_k": "5"}', JSON, 400, "top_k"),
    ("text_search", b'{"query": "x", "top_k": 100000000000000000000}', JSON, 400, "top_k"),
    ("image_search", b'{"image": "/etc/passwd"}', JSON, 400, "never read"),
    ("image_search", b'{"image": "http://169.254.169.254/latest"}', JSON, 400, "never read"),
    ("image_search", b'{"image": "aGVsbG8="}', JSON, 400, "base64"),
    ("image_search", b'{"image": 7}', JSON, 400, "base64 string"),
    ("image_search", json.dumps({"image_id": "x" * 300}).encode(), JSON, 400, "image_id"),
    ("image_search", b'{"image_id": "no-such-id"}', JSON, 400, "not in this index"),
    ("image_search", b"{}", JSON, 400, "exactly one"),
    ("image_search", json.dumps({"image": png_b64(emblem(1)), "image_id": "img0"}).encode(), JSON, 400, "exactly"),
    ("text_search", b'{"query": "' + b"a" * (70 << 10) + b'"}', JSON, 413, "limit"),
]


@pytest.mark.parametrize("path, body, headers, status, says", BAD_REQUESTS)
async def test_bad_request_is_a_4xx_json_error_without_traceback(service, caplog, path, body, headers, status, says):
    caplog.set_level(logging.INFO)
    url, _ = service
    got, out = await asyncio.wait_for(request(f"{url}/v1/{path}", data=body, headers=headers), 10)
    assert (got, says in out["error"]) == (status, True), out
    assert no_traceback(caplog)
    assert (await request(f"{url}/health", "GET"))[0] == 200


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/text_search", 405), ("POST", "/admin", 404)])
async def test_unknown_routes_and_methods(service, method, path, status):
    url, _ = service
    async with aiohttp.ClientSession() as s, s.request(method, url + path, headers=JSON) as r:
        assert r.status == status


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"bearer {TOKEN}", "Bearer"])
async def test_wrong_credentials_get_401_and_no_search(index, header):
    runner, port = await start_service(index, ServiceConfig(port=0, token=TOKEN))
    try:
        headers = dict(JSON, **({"Authorization": header} if header else {}))
        status, out = await request(f"http://127.0.0.1:{port}/v1/text_search", data=b'{"query": "x"}', headers=headers)
        assert status == 401 and TOKEN not in json.dumps(out)
    finally:
        await runner.cleanup()


async def _open(port):
    return await asyncio.open_connection("127.0.0.1", port)


async def test_client_disconnecting_mid_body_logs_no_traceback(service, caplog):
    caplog.set_level(logging.DEBUG)
    url, port = service
    for _ in range(5):
        reader, writer = await _open(port)
        writer.write(
            b"POST /v1/text_search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"query": "Eiff'
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(0.2)
    assert no_traceback(caplog)
    assert (await request(f"{url}/health", "GET"))[0] == 200


async def test_stalled_body_gets_408_within_the_body_timeout(service):
    _, port = service
    reader, writer = await _open(port)
    writer.write(
        b"POST /v1/text_search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"query": "Eiff'
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(200), 5)
    assert head.startswith(b"HTTP/1.1 408")
    writer.close()


@pytest.mark.parametrize("opening", [b"", b"POST /v1/text_search HTTP/1.1\r\nHost: x\r\n", b"GET /hea"])
async def test_idle_and_half_open_connections_are_closed(service, opening):
    url, port = service
    connections = [await _open(port) for _ in range(50)]
    for _, writer in connections:
        writer.write(opening)
        await writer.drain()
    closed = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in connections)), 5)
    assert all(data in (b"",) or data.startswith(b"HTTP/1.1 4") for data in closed)
    for _, writer in connections:
        writer.close()
    assert (await request(f"{url}/health", "GET"))[0] == 200


# ---- hostile answers to the client --------------------------------------------------------------------------
def _answer(status=200, body=b"{}", content_type="application/json"):
    async def handler(request):
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_post("/v1/text_search", handler)
    app.router.add_post("/v1/image_search", handler)
    return app


def _hit(i, image=None):
    hit = {"title": f"T{i}", "url": f"u/{i}", "text": f"passage {i}", "score": 1.0, "id": str(i)}
    if image is not None:
        hit["image"] = image
    return hit


HOSTILE_ANSWERS = [
    (_answer(body=b'{"hits": ' + HUGE_INT.encode() + b"}"), "text_search", "bad_response"),
    (_answer(body=b"[" * 50_000 + b"]" * 50_000), "text_search", "bad_response"),
    (_answer(body=b'{"hits": "\xff"}'), "text_search", "bad_response"),
    (_answer(body=b"<html>oops</html>", content_type="text/html"), "text_search", "bad_response"),
    (_answer(body=b'{"hits": [{"title": 1}]}'), "text_search", "bad_response"),
    (_answer(body=b'{"no_hits": []}'), "image_search", "bad_response"),
    (_answer(body=json.dumps({"hits": [_hit(0, "not base64 !")]}).encode()), "image_search", "bad_response"),
    (_answer(body=json.dumps({"hits": [_hit(0, "aGVsbG8=")]}).encode()), "image_search", "bad_image"),
    (_answer(status=500), "text_search", "backend"),
    (_answer(status=401), "image_search", "auth"),
    (_answer(status=429), "text_search", "rate_limited"),
    (_answer(body=b"x" * (2 << 20)), "text_search", "bad_response"),
]


def _runner(url) -> ToolRunner:
    config = ToolsConfig()
    settings = HttpSettings(timeout_s=5, attempts=1, max_response_bytes=1 << 20)
    return ToolRunner(build_tools(config, HttpSearchBackend(url, settings=settings)), config)


@pytest.mark.parametrize("app, tool, kind", HOSTILE_ANSWERS)
async def test_hostile_answer_is_a_counted_error(app, tool, kind):
    async with serve_app(app) as url:
        runner = _runner(url)
        arguments = {"query": "q"} if tool == "text_search" else {}
        out = await asyncio.wait_for(runner.call(tool, arguments, ToolContext(images={"img_0": emblem(0)})), 10)
        await runner.close()
    assert out.error == kind and out.text.startswith("Error") and runner.stats()[f"errors/{kind}"] == 1


async def test_client_decodes_only_top_k_of_a_flood_of_hits():
    image = png_b64(emblem(3, 32))
    hits = [_hit(i, image) for i in range(500)]
    async with serve_app(_answer(body=json.dumps({"hits": hits}).encode())) as url:
        backend = HttpSearchBackend(url, settings=HttpSettings(attempts=1, max_response_bytes=64 << 20))
        got = await backend.image_search(emblem(0), 3)
        text = await backend.text_search("q", 2)
        await backend.close()
    assert [h.title for h in got] == ["T0", "T1", "T2"] and [h.title for h in text] == ["T0", "T1"]
