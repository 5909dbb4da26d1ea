"""`ToolRunner`: what the agent calls. Validation, per-trajectory limits, timeouts, the cache, image limits and
observation truncation around the tools; every failure becomes a `ToolOutput` with an error kind. Never raises
(except `asyncio.CancelledError`, which belongs to the caller). Built from configuration by `tools/registry.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import traceback
from collections import Counter
from collections.abc import Iterable

from openrlhf_tapo.search.base import SearchError
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
from openrlhf_tapo.tools.image_fit import fit_image, fits
from openrlhf_tapo.utils.text import replace_surrogates_in

logger = logging.getLogger(__name__)


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
