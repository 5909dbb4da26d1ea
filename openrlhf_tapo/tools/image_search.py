"""image_search {"image"?: "img_K", "bbox"?: [x1, y1, x2, y2]}: images similar to an image in context (or to a
region of it), returned as new images with their titles and URLs. `image` defaults to "img_0", the question
image (MMSearch-R1's argument-free call), and is always present in the canonical form."""

from __future__ import annotations

from openrlhf_tapo.search.base import SearchBackend
from openrlhf_tapo.search.workers import run_cpu
from openrlhf_tapo.tools.base import (
    Tool,
    ToolContext,
    ToolResult,
    bbox_to_pixels,
    canonical_bbox,
    canonical_image_ref,
    check_keys,
)
from openrlhf_tapo.tools.config import ToolsConfig


class ImageSearchTool(Tool):
    name = "image_search"
    description = (
        "Search the web for images similar to an image in the conversation (by default the question image, "
        "img_0), optionally only a region of it given as a bounding box [x1, y1, x2, y2] in 0-1000 relative "
        "coordinates. Returns the top matching images with their titles and URLs."
    )

    needs_backend = True

    returns_images = True

    def __init__(self, *, backend: SearchBackend, config: ToolsConfig):
        self.backend = backend
        self.config = config.image_search

    def parameters_schema(self) -> dict:
        return {
            "type": "object",
            "properties": {
                "image": {
                    "type": "string",
                    "description": 'Reference of the image to search with, e.g. "img_0" (default: img_0).',
                },
                "bbox": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                    "minItems": 4,
                    "maxItems": 4,
                    "description": "Optional region [x1, y1, x2, y2], 0-1000 relative coordinates.",
                },
            },
            "required": [],
            "additionalProperties": False,
        }

    def canonicalize(self, arguments: dict) -> dict:
        check_keys(arguments, self.name, (), ("image", "bbox"))
        params = {"image": canonical_image_ref(arguments.get("image", "img_0"), self.name)}
        if arguments.get("bbox") is not None:
            bbox = canonical_bbox(arguments["bbox"], self.name)
            if bbox != [0, 0, 1000, 1000]:  # the whole image is the same search as no bbox
                params["bbox"] = bbox
        return params

    async def cache_key(self, params: dict, ctx: ToolContext) -> dict:
        key = {"image_sha256": await ctx.image_digest(params["image"])}
        if "bbox" in params:
            key["bbox"] = params["bbox"]
        return key

    async def execute(self, params: dict, ctx: ToolContext) -> ToolResult:
        image = ctx.get_image(params["image"])
        url = None
        if "bbox" in params:
            image = await run_cpu(image.crop, bbox_to_pixels(params["bbox"], image.size))
        else:
            url = ctx.image_urls.get(params["image"])
        # Cut here too: a backend that returns more than asked must not bloat the cache row.
        hits = (await self.backend.image_search(image, self.config.top_k, image_url=url))[: self.config.top_k]
        target = params["image"] + (f" region {params['bbox']}" if "bbox" in params else "")
        if not hits:
            return ToolResult(text=f"No similar images found for {target}.")
        images = [(f"{hit.title} (URL: {hit.url})" if hit.url else hit.title, hit.image) for hit in hits]
        return ToolResult(text=f"Image search results for {target}:", images=images)
