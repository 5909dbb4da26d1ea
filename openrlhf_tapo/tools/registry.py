"""Tools, backend, cache and runner built from `ToolsConfig`; the canonical form of a call without any backend.

Adding a tool: one `Tool` subclass + its name in TOOL_CLASSES (or "package.module:Class" in `tools.enabled`).
"""

from __future__ import annotations

import importlib

from openrlhf_tapo.search.base import SearchBackend
from openrlhf_tapo.tools.base import Tool
from openrlhf_tapo.tools.cache import ToolCache
from openrlhf_tapo.tools.config import ToolsConfig
from openrlhf_tapo.tools.image_search import ImageSearchTool
from openrlhf_tapo.tools.runner import ToolRunner
from openrlhf_tapo.tools.text_search import TextSearchTool
from openrlhf_tapo.tools.zoom import ZoomTool

# Built-in tools by name.
TOOL_CLASSES: dict[str, type[Tool]] = {
    "text_search": TextSearchTool,
    "image_search": ImageSearchTool,
    "zoom": ZoomTool,
}


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
