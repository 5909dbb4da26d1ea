"""The HTTP search service: serves one `LocalIndex` to every rollout worker of a cluster (aiohttp).

Endpoints (JSON in, JSON out; see docs/tools.md):
    GET  /health           -> {"status": "ok", "passages": N, "images": M}
    POST /v1/text_search   {"query": str, "top_k": int} -> {"hits": [{title, url, text, score, id}]}
    POST /v1/image_search  {"image": base64 | "image_id": str, "top_k": int}
                           -> {"hits": [{title, url, image (base64 JPEG), score, id}]}
Security model: binds 127.0.0.1 unless told otherwise (and then a token is required unless explicitly waived);
optional bearer token compared in constant time; every field type/length/bound checked and unknown fields
refused; bodies over `max_body_bytes` refused with 413 before they are read, bodies that are not
`application/json` with 415, bodies that do not arrive within `body_timeout_s` with 408; connections idle for
`idle_timeout_s` (no request, or half a request head) are closed; images only as base64 bytes (format
whitelist, byte and pixel limits, decompression bombs refused) or as ids of this index: a string that is not an
encoded image is refused, never opened as a path or fetched as a URL; at most `max_concurrency` searches run at
once and at most `max_pending` wait, beyond that 503.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import logging
from dataclasses import dataclass

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from openrlhf_tapo.search.base import SearchBadImage
from openrlhf_tapo.search.images import decode_base64_image, decode_image
from openrlhf_tapo.search.local_index import LocalIndex
from openrlhf_tapo.search.workers import run_cpu

logger = logging.getLogger(__name__)


@dataclass
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token; None = no authentication (loopback only by default)
    max_body_bytes: int = 12 << 20  # request bodies above this get 413 (base64 of an 8 MiB image fits)
    max_query_chars: int = 1024
    max_top_k: int = 50
    max_image_bytes: int = 8 << 20  # decoded image bytes
    max_image_pixels: int = 40_000_000
    max_id_chars: int = 256
    max_concurrency: int = 16  # searches running at once
    max_pending: int = 256  # searches waiting for a slot; beyond it requests get 503
    idle_timeout_s: float = 15.0  # a connection that sends no (complete) request head for this long is closed
    body_timeout_s: float = 15.0  # a request body not fully received within this gets 408


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BadRequest(Exception):
    pass


class Busy(Exception):
    pass


class ClientGone(Exception):
    """The client closed the connection before its request body arrived: nobody is left to answer."""


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class SearchService:
    def __init__(self, index: LocalIndex, config: ServiceConfig | None = None):
        self.index = index
        self.config = config or ServiceConfig()
        self._slots = asyncio.Semaphore(self.config.max_concurrency)
        self._waiting = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._guard])
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/text_search", self.text_search)
        app.router.add_post("/v1/image_search", self.image_search)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        token = self.config.token
        if token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.json_response(
                    {"error": "missing or wrong bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
                )
        length = request.content_length
        if length is not None and length > self.config.max_body_bytes:
            return _json_error(413, f"request body is {length} bytes, the limit is {self.config.max_body_bytes}")
        if request.method == "POST" and request.content_type != "application/json":
            return _json_error(415, "the request body must be JSON: send Content-Type: application/json")
        try:
            return await handler(request)
        except BadRequest as err:
            return _json_error(400, str(err))
        except ClientGone:
            logger.info("client disconnected before sending its whole request body")
            return _json_error(400, "incomplete request body")
        except TimeoutError:
            return _json_error(408, f"request body not received within {self.config.body_timeout_s:g} s")
        except Busy as err:
            return _json_error(503, str(err))
        except web.HTTPRequestEntityTooLarge:
            return _json_error(413, f"request body is over the {self.config.max_body_bytes}-byte limit")
        except web.HTTPException:
            raise
        except Exception:
            logger.exception("search request failed")
            return _json_error(500, "internal error")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "passages": self.index.num_passages, "images": self.index.num_images}
        )

    async def _body(self, request: web.Request, required: tuple, optional: tuple = ()) -> dict:
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                raw = await request.read()  # bounded by client_max_size
        except (ConnectionError, ClientPayloadError, HttpProcessingError):
            raise ClientGone from None
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
            raise BadRequest("body must be a UTF-8 JSON object (nested at most a few hundred levels)") from None
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        unknown = sorted(set(body) - set(required) - set(optional))
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(map(str, unknown))}")
        missing = [k for k in required if k not in body]
        if missing:
            raise BadRequest(f"missing field(s): {', '.join(missing)}")
        top_k = body.get("top_k", 5)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.config.max_top_k:
            raise BadRequest(f"top_k must be an integer in 1..{self.config.max_top_k}")
        body["top_k"] = top_k
        return body

    async def _run(self, fn, *args):
        if self._waiting >= self.config.max_pending:
            raise Busy("service busy, retry later")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            return await run_cpu(fn, *args)
        finally:
            self._slots.release()

    async def text_search(self, request: web.Request) -> web.Response:
        body = await self._body(request, ("query",), ("top_k",))
        query = body["query"]
        if not isinstance(query, str) or not query.strip():
            raise BadRequest("query must be a non-empty string")
        if len(query) > self.config.max_query_chars:
            raise BadRequest(f"query is longer than {self.config.max_query_chars} characters")
        hits = await self._run(self.index.search_text, query, body["top_k"])
        return web.json_response(
            {"hits": [{"title": h.title, "url": h.url, "text": h.text, "score": h.score, "id": h.id} for h in hits]}
        )

    async def image_search(self, request: web.Request) -> web.Response:
        body = await self._body(request, (), ("image", "image_id", "top_k"))
        if ("image" in body) == ("image_id" in body):
            raise BadRequest("give exactly one of image (base64 bytes) or image_id (an id of this index)")
        if "image_id" in body:
            image_id = body["image_id"]
            if not isinstance(image_id, str) or not 0 < len(image_id) <= self.config.max_id_chars:
                raise BadRequest(f"image_id must be a string of 1..{self.config.max_id_chars} characters")
        elif not isinstance(body["image"], str):
            raise BadRequest("image must be a base64 string of PNG/JPEG/WEBP/GIF/BMP bytes")
        # Decoding counts against the concurrency bound like the search itself: both are CPU work.
        rows = await self._run(self._image_search, body)
        hits = [
            {"title": t, "url": u, "image": base64.b64encode(jpeg).decode("ascii"), "score": s, "id": i}
            for i, t, u, jpeg, s in rows
        ]
        return web.json_response({"hits": hits})

    def _image_search(self, body: dict) -> list[tuple]:
        if "image_id" in body:
            image = self.index.image_by_id(body["image_id"])
            if image is None:
                raise BadRequest(f"image_id {body['image_id'][:64]!r} is not in this index")
        else:
            image = self._decode(body["image"])
        return self.index.search_image_encoded(image, body["top_k"])

    def _decode(self, value: str):
        data = decode_base64_image(value)
        if data is None:
            # Deliberately no file-system or network access here: a path or URL is just an invalid value.
            raise BadRequest(
                "image must be base64-encoded PNG/JPEG/WEBP/GIF/BMP bytes (file paths and URLs are never read)"
            )
        if len(data) > self.config.max_image_bytes:
            raise BadRequest(f"image is {len(data)} bytes, the limit is {self.config.max_image_bytes}")
        try:
            return decode_image(data, max_pixels=self.config.max_image_pixels)
        except SearchBadImage as err:
            raise BadRequest(str(err)) from None


async def start_service(index: LocalIndex, config: ServiceConfig, *, allow_remote_without_token: bool = False):
    """Start serving in the running loop; returns the aiohttp AppRunner (call `.cleanup()` to stop) and the
    bound port (useful with port=0)."""
    if not is_loopback(config.host) and config.token is None and not allow_remote_without_token:
        raise ValueError(
            f"refusing to serve on non-loopback host {config.host!r} without a token: set one (--token-env VAR) "
            "or pass --allow-remote-without-token"
        )
    runner = web.AppRunner(
        SearchService(index, config).app(), access_log=None, keepalive_timeout=config.idle_timeout_s
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = runner.addresses[0][1]
    logger.info(
        "search service on http://%s:%d (%d passages, %d images, token %s)",
        config.host,
        port,
        index.num_passages,
        index.num_images,
        "required" if config.token else "off",
    )
    return runner, port
