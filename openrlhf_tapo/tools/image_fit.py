"""Returned images sized so that every Qwen-VL processor accepts them: aspect ratio, pixel budget, shortest side."""

from __future__ import annotations

import math

from PIL import Image

MAX_ASPECT_RATIO = 50  # Qwen2-VL's processor refuses aspect ratios over 200; thin crops are padded to 1:50


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
