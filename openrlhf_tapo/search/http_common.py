"""HTTP plumbing shared by the search-service client and the web API clients: retries with exponential backoff
and jitter, per-request timeouts, a token-bucket rate limit, bounded concurrency, response size limits and
strict decoding. Error messages name the service and the status, never a URL, header or key (API keys travel
in headers or query strings, and aiohttp's own exception texts include the full URL)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass

import aiohttp

from openrlhf_tapo.search.base import SearchBadResponse, SearchError, SearchRateLimited, SearchTimeout

logger = logging.getLogger(__name__)


@dataclass
class HttpSettings:
    """Mirror of tools.config.BackendConfig's HTTP fields (search/ does not import tools/)."""

    timeout_s: float = 20.0
    max_response_bytes: int = 8 << 20
    max_concurrency: int = 32
    rate_limit_per_s: float = 0.0
    attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    retry_on_status: tuple[int, ...] = (429, 500, 502, 503, 504)

    @classmethod
    def from_backend_config(cls, cfg) -> HttpSettings:
        r = cfg.retry
        return cls(
            timeout_s=cfg.timeout_s,
            max_response_bytes=cfg.max_response_bytes,
            max_concurrency=cfg.max_concurrency,
            rate_limit_per_s=cfg.rate_limit_per_s,
            attempts=r.attempts,
            backoff_s=r.backoff_s,
            max_backoff_s=r.max_backoff_s,
            retry_on_status=tuple(r.retry_on_status),
        )


class TokenBucket:
    """At most `rate` acquisitions per second on average, bursts of up to max(1, rate)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


class HttpJsonClient:
    """One aiohttp session per event loop (created lazily inside the loop that uses it), shared by all calls."""

    def __init__(self, service: str, settings: HttpSettings, headers: dict[str, str] | None = None):
        self.service = service  # the name used in error messages, e.g. "Serper"
        self.settings = settings
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limiter: TokenBucket | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self.retries = 0

    def _ensure(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            self._loop = loop
            timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
            connector = aiohttp.TCPConnector(limit=self.settings.max_concurrency)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, headers=self._headers)
            self._limiter = TokenBucket(self.settings.rate_limit_per_s)
            self._semaphore = asyncio.Semaphore(self.settings.max_concurrency)
        return self._session

    async def request_json(self, method: str, url: str, **kwargs) -> dict | list:
        """The decoded JSON body of a successful request; retries timeouts, connection errors and the
        configured statuses (429 and 5xx by default), then raises a SearchError naming the last failure."""
        session = self._ensure()
        s = self.settings
        last: SearchError | None = None
        for attempt in range(max(1, s.attempts)):
            if attempt:
                self.retries += 1
                await asyncio.sleep(self._delay(attempt, last))
            await self._limiter.acquire()
            try:
                async with self._semaphore, session.request(method, url, **kwargs) as resp:
                    if resp.status in s.retry_on_status:
                        last = self._status_error(resp)
                        continue
                    if resp.status >= 400:
                        raise self._status_error(resp)
                    return self._decode(await self._read(resp, s.max_response_bytes))
            except TimeoutError:
                last = SearchTimeout(f"{self.service} did not answer within {s.timeout_s:g} s")
            except aiohttp.ClientError as err:
                # str(err) may contain the URL (and with it a key in the query string): only the type is shown.
                last = SearchError(f"{self.service} connection failed ({type(err).__name__})", "backend")
        raise last

    def _status_error(self, resp: aiohttp.ClientResponse) -> SearchError:
        if resp.status == 429:
            err = SearchRateLimited(f"{self.service} rate limit exceeded (HTTP 429)")
            err.retry_after = _retry_after(resp.headers.get("Retry-After"))
            return err
        if resp.status in (401, 403):
            return SearchError(f"{self.service} refused the credentials (HTTP {resp.status})", "auth")
        return SearchError(f"{self.service} failed (HTTP {resp.status})", "backend")

    def _delay(self, attempt: int, last: SearchError | None) -> float:
        s = self.settings
        delay = min(s.max_backoff_s, s.backoff_s * 2 ** (attempt - 1)) * (1 + 0.25 * random.random())
        retry_after = getattr(last, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.max_backoff_s))
        return delay

    async def _read(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        if resp.content_length is not None and resp.content_length > limit:
            raise SearchBadResponse(
                f"{self.service} response is {resp.content_length} bytes, over the {limit}-byte limit"
            )
        body = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > limit:
                raise SearchBadResponse(f"{self.service} response is over the {limit}-byte limit")
        return bytes(body)

    def _decode(self, body: bytes) -> dict | list:
        try:
            return json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise SearchBadResponse(f"{self.service} response is not UTF-8 (byte {err.start})") from None
        except json.JSONDecodeError as err:
            raise SearchBadResponse(f"{self.service} response is not JSON ({err.msg})") from None
        except (ValueError, RecursionError):  # an integer of over 4,300 digits, or nesting deeper than the stack
            raise SearchBadResponse(f"{self.service} response is JSON this client cannot read") from None

    async def get_bytes(self, url: str, max_bytes: int) -> bytes:
        """A raw download (web thumbnails): one try, size-limited."""
        session = self._ensure()
        await self._limiter.acquire()
        try:
            async with self._semaphore, session.get(url) as resp:
                if resp.status >= 400:
                    raise SearchError(f"download failed (HTTP {resp.status})", "backend")
                return await self._read(resp, max_bytes)
        except TimeoutError:
            raise SearchTimeout("download timed out") from None
        except aiohttp.ClientError as err:
            raise SearchError(f"download failed ({type(err).__name__})", "backend") from None

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
