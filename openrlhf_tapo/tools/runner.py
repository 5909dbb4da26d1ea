"""`ToolRunner`: what the agent calls. Validation, per-trajectory limits, timeouts, the cache, image limits and
observation truncation around the tools; every failure becomes a `ToolOutput` with an error kind. Never raises
(except `asyncio.CancelledError`, which belongs to the caller).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import math
import sqlite3
import traceback
from collections import Counter
from collections.abc import Iterable

from PIL import Image

from openrlhf_tapo.search.base import SearchBackend, SearchError
from openrlhf_tapo.search.workers import run_cpu
from openrlhf_tapo.tools.base import (
    Tool,
    ToolArgumentError,
    ToolContext,
    ToolError,
    ToolOutput,
    ToolResult,
    check_result,
    error_text,
)
from openrlhf_tapo.tools.cache import ToolCache
from openrlhf_tapo.tools.config import ToolsConfig
from openrlhf_tapo.tools.image_search import ImageSearchTool
from openrlhf_tapo.tools.text_search import TextSearchTool
from openrlhf_tapo.tools.zoom import ZoomTool
from openrlhf_tapo.utils.text import replace_surrogates_in

logger = logging.getLogger(__name__)

# Built-in tools by name. Adding a tool: one Tool subclass + its name here (or "module:Class" in `enabled`).
TOOL_CLASSES: dict[str, type[Tool]] = {
    "text_search": TextSearchTool,
    "image_search": ImageSearchTool,
    "zoom": ZoomTool,
}
MAX_ASPECT_RATIO = 50  # Qwen2-VL's processor refuses aspect ratios over 200; thin crops are padded to 1:50


class ToolRunner:
    def __init__(self, tools: Iterable[Tool], config: ToolsConfig | None = None, cache: ToolCache | None = None):
        self.config = config or ToolsConfig()
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in self.tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self.tools[tool.name] = tool
        self.cache = cache
        self.counts: Counter[str] = Counter()  # calls/<tool>, errors/<kind>, cache_hits, cache_misses
        self._variants: dict[str, dict] = {}  # tool name -> tool_variant (configuration is fixed after start)

    def schemas(self) -> list[dict]:
        return [tool.schema() for tool in self.tools.values()]

    def canonical_params(self, name: str, arguments) -> dict | None:
        tool = self.tools.get(name)
        if tool is None:
            return None
        try:
            return tool.canonicalize(_parse_arguments(arguments, name))
        except ToolError:
            return None

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    async def call(self, name: str, arguments, ctx: ToolContext) -> ToolOutput:
        params = None
        tool = self.tools.get(name) if isinstance(name, str) else None
        try:
            if tool is None:
                available = ", ".join(self.tools)
                raise ToolError(f"unknown tool {name!r}; available tools: {available}", "unknown_tool")
            params = tool.canonicalize(_parse_arguments(arguments, name))
            output = await self._call(tool, params, ctx)
        except asyncio.CancelledError:
            raise
        except (ToolError, SearchError) as err:
            output = self._error(err.kind, str(err), params)
        except TimeoutError:
            output = self._error("timeout", f"{name} took longer than {self.config.timeout_s:g} s; try again", params)
        except Exception as err:
            # The exception's message is neither shown nor logged: a backend's can carry a URL with its API key.
            stack = "".join(traceback.format_tb(err.__traceback__))
            logger.error("tool %s failed unexpectedly with %s\n%s", name, type(err).__name__, stack)
            output = self._error("internal", f"{name} failed unexpectedly ({type(err).__name__})", params)
        self.counts[f"calls/{tool.name if tool else 'unknown'}"] += 1
        if output.error:
            self.counts[f"errors/{output.error}"] += 1
        return output

    async def _call(self, tool: Tool, params: dict, ctx: ToolContext) -> ToolOutput:
        used = ctx.call_counts.get(tool.name, 0)
        if used >= self.config.max_calls_per_tool:
            raise ToolError(
                f"{tool.name} was already called {used} times, the limit per question; answer with what you have",
                "call_limit",
            )
        ctx.call_counts[tool.name] = used + 1
        image_room = self.config.max_images_per_trajectory - len(ctx.images)
        if tool.returns_images and image_room <= 0:
            raise ToolError(
                f"the conversation already holds {len(ctx.images)} images, the limit; {tool.name} cannot add more",
                "image_limit",
            )

        result, cached, key = None, False, None
        if self.cache is not None and tool.cacheable:
            variant = self._variants.get(tool.name)
            if variant is None:
                variant = self._variants[tool.name] = tool_variant(tool)
            key = {"params": await tool.cache_key(params, ctx), "variant": variant}
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    result = await self.cache.get(tool.name, key)
            except (sqlite3.Error, TimeoutError) as err:  # a broken or locked cache must not fail the call
                logger.warning("tool cache read failed (%s %s); calling the backend", type(err).__name__, err)
                self.counts["cache_errors"] += 1
            cached = result is not None
            self.counts["cache_hits" if cached else "cache_misses"] += 1
            if not cached and self.cache.replay:
                raise ToolError(f"{tool.name}: no cached result for these parameters (replay mode)", "cache_miss")
        if result is None:
            async with asyncio.timeout(self.config.timeout_s):
                result = await tool.execute(params, ctx)
            result = check_result(result, tool.name)  # before the cache: an invalid result must never be stored
            if key is not None:
                try:
                    async with asyncio.timeout(self.config.timeout_s):
                        await self.cache.put(tool.name, key, result)
                except (sqlite3.Error, TimeoutError) as err:
                    logger.warning("tool cache write failed (%s %s); result not cached", type(err).__name__, err)
                    self.counts["cache_errors"] += 1

        result, note = await self._limit_images(result, image_room)
        output = tool.render(result, ctx)
        if note:
            output.text = f"{output.text}\n{note}" if output.text else note
        output.text = truncate(output.text, self.config.max_observation_chars)
        output.cached, output.params = cached, params
        return output

    async def _limit_images(self, result: ToolResult, image_room: int) -> tuple[ToolResult, str]:
        cfg = self.config
        kept = result.images[: min(cfg.max_images_per_call, image_room)]
        dropped = len(result.images) - len(kept)
        note = f"({dropped} more image(s) not shown: image limit reached)" if dropped else ""
        if any(not fits(im, cfg.max_image_pixels, cfg.min_image_side) for _, im in kept):  # resizing: worker pool
            kept = await run_cpu(
                lambda: [(c, fit_image(im, cfg.max_image_pixels, cfg.min_image_side)) for c, im in kept]
            )
        return ToolResult(text=result.text, images=kept), note

    def _error(self, kind: str, message: str, params: dict | None) -> ToolOutput:
        return ToolOutput(
            text=truncate(error_text(message), self.config.max_observation_chars), error=kind, params=params
        )

    async def close(self) -> None:
        closed = set()
        for tool in self.tools.values():
            await tool.close()
            backend = getattr(tool, "backend", None)
            if backend is not None and id(backend) not in closed:
                closed.add(id(backend))
                await backend.close()
        if self.cache is not None:
            logger.info("tool cache: %s", self.cache.stats())
            self.cache.close()


def _parse_arguments(arguments, name: str) -> dict:
    """Arguments as a dict; a JSON string (OpenAI style) is parsed. None means no arguments."""
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as err:
            raise ToolError(
                f"{name}: arguments are not valid JSON ({err.msg} at position {err.pos})", "bad_json"
            ) from None
        except (ValueError, RecursionError):  # an integer of over 4,300 digits, or nesting deeper than Python's stack
            raise ToolError(
                f"{name}: arguments are not valid JSON (a number too long or nesting too deep)", "bad_json"
            ) from None
    if not isinstance(arguments, dict):
        raise ToolArgumentError(f"{name}: arguments must be a JSON object, got {type(arguments).__name__}")
    return replace_surrogates_in(arguments)


def tool_variant(tool: Tool) -> dict:
    """Settings that change a tool's result (top-k, passage length, backend): part of its cache key."""
    cfg = getattr(tool, "config", None)
    variant = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) and not isinstance(cfg, ToolsConfig) else {}
    backend = getattr(tool, "backend", None)
    if backend is not None:
        variant["backend"] = backend.name
    return variant


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"\n... [truncated {len(text) - limit} characters]"
    return text[: max(0, limit - len(marker))] + marker


def fits(image: Image.Image, max_pixels: int, min_side: int) -> bool:
    """Whether `fit_image` would return the image unchanged (checked on the size alone, no pixel touched)."""
    w, h = image.size
    return w * h <= max_pixels and min(w, h) >= min_side and max(w, h) <= MAX_ASPECT_RATIO * min(w, h)


def fit_image(image: Image.Image, max_pixels: int, min_side: int) -> Image.Image:
    """Pad to an aspect ratio of at most 1:50, downscale to max_pixels, upscale to min_side: a size every
    Qwen-VL processor accepts. Returns the image itself when nothing changes."""
    w, h = image.size
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        pw, ph = max(w, -(-h // MAX_ASPECT_RATIO)), max(h, -(-w // MAX_ASPECT_RATIO))
        canvas = Image.new(image.mode, (pw, ph), "white" if image.mode in ("RGB", "L", "RGBA") else 0)
        canvas.paste(image, ((pw - w) // 2, (ph - h) // 2))
        image, (w, h) = canvas, (pw, ph)
    scale = 1.0
    if w * h > max_pixels:
        scale = math.sqrt(max_pixels / (w * h))
    if min(w, h) * scale < min_side:
        scale = min_side / min(w, h)
    if scale == 1.0:
        return image
    size = (max(min_side, math.floor(w * scale)), max(min_side, math.floor(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


# ---- construction from configuration ------------------------------------------------------------------------
def build_backend(config: ToolsConfig) -> SearchBackend:
    b = config.backend
    if b.kind == "local":
        from openrlhf_tapo.search.local_index import LocalIndexBackend

        if not b.index_dir:
            raise ValueError(
                "tools.backend.index_dir is required for the local backend (build one with "
                "`python -m openrlhf_tapo.cli.build_index`)"
            )
        return LocalIndexBackend(b.index_dir, max_image_pixels=b.max_image_pixels)
    if b.kind == "http":
        from openrlhf_tapo.search.http_client import HttpSearchBackend

        return HttpSearchBackend.from_config(b)
    from openrlhf_tapo.search.web import SerpApiBackend, SerperBackend

    return (SerperBackend if b.kind == "serper" else SerpApiBackend).from_config(b)


def tool_classes(config: ToolsConfig) -> list[type[Tool]]:
    classes = []
    for entry in config.enabled:
        if entry in TOOL_CLASSES:
            classes.append(TOOL_CLASSES[entry])
        elif ":" in entry:
            module, _, attr = entry.partition(":")
            classes.append(getattr(importlib.import_module(module), attr))
        else:
            raise ValueError(
                f"tools.enabled: unknown tool {entry!r}; built-in tools: {', '.join(TOOL_CLASSES)}, "
                "or give 'package.module:Class'"
            )
    return classes


def build_tools(config: ToolsConfig, backend: SearchBackend | None) -> list[Tool]:
    return [cls(backend=backend, config=config) for cls in tool_classes(config)]


def build_tool_runner(config: ToolsConfig | dict | None = None, backend: SearchBackend | None = None) -> ToolRunner:
    """The runner described by `config` (a ToolsConfig or its YAML dict). `backend` overrides config.backend;
    a backend is only built when an enabled tool needs one (`Tool.needs_backend`)."""
    config = config if isinstance(config, ToolsConfig) else ToolsConfig.from_dict(config)
    classes = tool_classes(config)
    if backend is None and any(cls.needs_backend for cls in classes):
        backend = build_backend(config)
    cache = None
    if config.cache.mode != "off":
        # A locked database holds a cache thread no longer than a call may take (the runner stops waiting then).
        busy_timeout_s = min(config.timeout_s, 30.0)
        cache = ToolCache(config.cache.path, replay=config.cache.mode == "replay", busy_timeout_s=busy_timeout_s)
    return ToolRunner([cls(backend=backend, config=config) for cls in classes], config, cache)


def canonicalizer(config: ToolsConfig | None = None) -> ToolRunner:
    """A runner of the tools `config` enables (custom ones included, with its limits), built without backend or cache:
    for `canonical_params` only, the canonicalisation the rollout's runner applies (the TAPO stage uses it)."""
    config = config or ToolsConfig()
    return ToolRunner(build_tools(config, backend=None), config)


_DEFAULT_RUNNER: ToolRunner | None = None


def canonical_params(name: str, arguments) -> dict | None:
    """The canonical parameters of a call to a built-in tool with default settings, or None when the
    arguments do not validate (no backend is built)."""
    global _DEFAULT_RUNNER
    if _DEFAULT_RUNNER is None:
        _DEFAULT_RUNNER = canonicalizer()
    return _DEFAULT_RUNNER.canonical_params(name, arguments)
