"""Typed configuration of the tools, their search backend and the tool-result cache (defaults documented here).

The agent configuration (YAML, owned by agent/) embeds a `ToolsConfig` under its `tools:` key; `from_dict`
builds it from plain YAML data and names any unknown key instead of ignoring it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from openrlhf_tapo.utils.config_files import check_keys


@dataclass
class RetryConfig:
    """Retries of HTTP backends (HTTP service client, Serper, SerpAPI)."""

    attempts: int = 3  # total tries per request, first one included
    backoff_s: float = 0.5  # delay before the 2nd try; doubles each try (plus up to 25% jitter)
    max_backoff_s: float = 8.0  # cap of one delay; a 429's Retry-After is honoured up to this cap
    retry_on_status: tuple[int, ...] = (429, 500, 502, 503, 504)


@dataclass
class BackendConfig:
    kind: Literal["local", "http", "serper", "serpapi"] = "local"
    index_dir: str | None = None  # local: directory written by `python -m openrlhf_tapo.cli.build_index`
    url: str = "http://127.0.0.1:8000"  # http: base URL of `python -m openrlhf_tapo.cli.serve_search`
    token_env: str | None = None  # http: environment variable holding the service's bearer token
    api_key_env: str | None = None  # serper/serpapi: env var with the key (default SERPER_API_KEY / SERPAPI_API_KEY)
    endpoint: str | None = None  # serper/serpapi: override the API base URL (tests, proxies)
    timeout_s: float = 20.0  # per HTTP request (connect + read)
    max_response_bytes: int = 8 << 20  # larger responses are refused as bad_response
    max_concurrency: int = 32  # concurrent requests per backend instance
    rate_limit_per_s: float = 0.0  # requests/second per backend instance (token bucket); 0 = unlimited
    retry: RetryConfig = field(default_factory=RetryConfig)
    max_image_pixels: int = 40_000_000  # decoded images above this are refused (bombs)


@dataclass
class CacheConfig:
    mode: Literal["off", "readwrite", "replay"] = "off"  # replay: serve only from the cache, never the backend
    path: str | None = None  # SQLite file; required unless mode is "off"


@dataclass
class TextSearchConfig:
    top_k: int = 5
    max_query_chars: int = 512  # longer queries are refused (bad_arguments), not cut
    max_passage_chars: int = 600  # each passage is cut to this length in the observation


@dataclass
class ImageSearchConfig:
    top_k: int = 3


@dataclass
class ZoomConfig:
    pass


@dataclass
class ToolsConfig:
    # Tools offered to the model: built-in names (text_search, image_search, zoom) or "package.module:Class"
    # for an extra tool (constructed as Class(backend=..., config=this ToolsConfig)).
    enabled: list[str] = field(default_factory=lambda: ["image_search", "text_search", "zoom"])
    timeout_s: float = 60.0  # wall-clock limit of one tool call, backend retries included
    max_calls_per_tool: int = 5  # per trajectory; further calls get a call_limit error
    max_observation_chars: int = 4000  # observation text is cut to this length (with a marker)
    max_images_per_call: int = 5  # images a single call may return; the rest are dropped with a note
    max_images_per_trajectory: int = 16  # question images included; beyond it calls get an image_limit error
    max_image_pixels: int = 512 * 512  # returned images are downscaled to at most this many pixels
    # and upscaled to at least this side: one merged patch block of Qwen2.5-VL (2 x 14 px); Qwen3-VL's processor
    # rounds 28 px to its 32 px block (2 x 16 px), so 28 serves both (tests/test_qwen3_vl.py)
    min_image_side: int = 28
    text_search: TextSearchConfig = field(default_factory=TextSearchConfig)
    image_search: ImageSearchConfig = field(default_factory=ImageSearchConfig)
    zoom: ZoomConfig = field(default_factory=ZoomConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    options: dict[str, dict] = field(default_factory=dict)  # free-form settings of extra tools, by tool name

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ToolsConfig:
        return _from_dict(cls, data or {}, "tools")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _from_dict(cls, data: dict, where: str):
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(data, fields, where)
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    obj = cls(**kwargs)
    _validate(obj, where)
    return obj


def _validate(obj, where: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value < 0:
            raise ValueError(f"{where}.{f.name} must be >= 0, got {value}")
    if isinstance(obj, CacheConfig):
        if obj.mode not in ("off", "readwrite", "replay"):
            raise ValueError(f"{where}.mode must be off, readwrite or replay, got {obj.mode!r}")
        if obj.mode != "off" and not obj.path:
            raise ValueError(f"{where}.path is required when {where}.mode is {obj.mode!r}")
    if isinstance(obj, BackendConfig) and obj.kind not in ("local", "http", "serper", "serpapi"):
        raise ValueError(f"{where}.kind must be local, http, serper or serpapi, got {obj.kind!r}")
    if isinstance(obj, TextSearchConfig | ImageSearchConfig) and not 1 <= obj.top_k <= 50:
        raise ValueError(f"{where}.top_k must be in 1..50, got {obj.top_k}")
