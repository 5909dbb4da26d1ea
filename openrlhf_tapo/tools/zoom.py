"""zoom {"image": "img_K", "bbox": [x1, y1, x2, y2]}: the crop of an image in context, returned as a new image."""

from __future__ import annotations

from PIL import Image

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


class ZoomTool(Tool):
    name = "zoom"
    description = (
        "Zoom in on a region of an image in the conversation. The region is a bounding box [x1, y1, x2, y2] "
        "in coordinates relative to the image, from 0 (left/top) to 1000 (right/bottom). Returns the crop as a "
        "new image."
    )
    cacheable = False  # a crop costs less than a cache round trip, and needs no backend

    returns_images = True

    def __init__(self, *, backend=None, config: ToolsConfig):
        self.config = config

    def parameters_schema(self) -> dict:
        return {
            "type": "object",
            "properties": {
                "image": {"type": "string", "description": 'Reference of the image to zoom into, e.g. "img_0".'},
                "bbox": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                    "minItems": 4,
                    "maxItems": 4,
                    "description": "[x1, y1, x2, y2], 0-1000 relative coordinates, x1 < x2 and y1 < y2.",
                },
            },
            "required": ["image", "bbox"],
            "additionalProperties": False,
        }

    def canonicalize(self, arguments: dict) -> dict:
        check_keys(arguments, self.name, ("image", "bbox"))
        return {
            "image": canonical_image_ref(arguments["image"], self.name),
            "bbox": canonical_bbox(arguments["bbox"], self.name),
        }

    async def execute(self, params: dict, ctx: ToolContext) -> ToolResult:
        image = ctx.get_image(params["image"])
        crop = await run_cpu(_crop, image, params["bbox"])
        x1, y1, x2, y2 = params["bbox"]
        return ToolResult(text="", images=[(f"zoom of {params['image']} at [{x1}, {y1}, {x2}, {y2}]", crop)])


def _crop(image: Image.Image, bbox: list[int]) -> Image.Image:
    return image.crop(bbox_to_pixels(bbox, image.size))
