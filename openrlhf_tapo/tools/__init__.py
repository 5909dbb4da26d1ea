"""The information-acquisition tools (text_search, image_search, zoom), the runner and the tool-result cache.
See docs/tools.md."""

from openrlhf_tapo.tools.base import (
    ImageRefError,
    Tool,
    ToolArgumentError,
    ToolContext,
    ToolError,
    ToolOutput,
    ToolResult,
)
from openrlhf_tapo.tools.cache import ToolCache
from openrlhf_tapo.tools.config import BackendConfig, CacheConfig, ToolsConfig
from openrlhf_tapo.tools.registry import build_tool_runner, canonical_params, canonicalizer
from openrlhf_tapo.tools.runner import ToolRunner

__all__ = [
    "BackendConfig",
    "CacheConfig",
    "ImageRefError",
    "Tool",
    "ToolArgumentError",
    "ToolCache",
    "ToolContext",
    "ToolError",
    "ToolOutput",
    "ToolResult",
    "ToolRunner",
    "ToolsConfig",
    "build_tool_runner",
    "canonical_params",
    "canonicalizer",
]
