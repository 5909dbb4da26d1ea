"""What images cost a launch, from sizes alone: tokens per image (the Qwen-VL processors' `smart_resize` rules),
bytes per image token in the trainer's dtype, and the multimodal payload of one RL step against Ray's object store.

A Qwen2-VL-family processor resizes an image to multiples of `patch_size * merge_size` (within min/max pixels) and
emits one `<|image_pad|>` token per merged patch; `pixel_values` then hold, per image token, `merge_size**2` patches
of `3 * temporal_patch_size * patch_size**2` values. Qwen2.5-VL (patch 14): 4 x 1176 values, 18.8 KB per token in
float32, 9.4 KB in bfloat16; Qwen3-VL (patch 16): 24.6 / 12.3 KB. Every trajectory's `pixel_values` are held by
OpenRLHF's one PPOTrainer actor and cross Ray's object store about OBJECT_STORE_COPIES times per step
(docs/integration.md, "GPU-path risks", row 1).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

OBJECT_STORE_COPIES = 3  # rollout -> trainer, trainer -> actor and reference forward, -> replay buffer
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class VisionSpec:
    """The image-to-token rules of a Qwen2-VL-family processor. Defaults: Qwen2.5-VL's released processor."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 16384  # 12,845,056: up to 16,384 tokens for one image
    source: str = "Qwen2.5-VL's defaults"  # where the values were read, for messages

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def image_tokens(self, width: int, height: int) -> int:
        """`<|image_pad|>` tokens of a `width` x `height` image after the processor's resize."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        h, w = smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return (h // self.factor) * (w // self.factor)

    def bytes_per_token(self, dtype: str) -> int:
        values = self.merge_size**2 * 3 * self.temporal_patch_size * self.patch_size**2
        return values * DTYPE_BYTES[dtype]


QWEN3_VL = VisionSpec(patch_size=16, min_pixels=65536, max_pixels=16777216, source="Qwen3-VL's defaults")


def vision_spec(model: str | None) -> VisionSpec | None:
    """The vision rules of `model` (a local folder's processor files, else its name), None for a text-only model.

    A local folder is a VLM when its config.json has `vision_config`; its preprocessor_config.json (or
    processor_config.json's `image_processor`) gives the sizes. A hub id is taken by its name: `...-VL...`."""
    if not model:
        return None
    folder = Path(model).expanduser()
    if folder.is_dir():
        config = _read_json(folder / "config.json")
        if "vision_config" not in config:
            return None
        processor = _read_json(folder / "preprocessor_config.json") or _read_json(folder / "processor_config.json")
        processor = processor.get("image_processor", processor)
        base = QWEN3_VL if config.get("model_type", "").startswith("qwen3") else VisionSpec()
        size = processor.get("size") or {}
        return VisionSpec(
            patch_size=processor.get("patch_size", config["vision_config"].get("patch_size", base.patch_size)),
            merge_size=processor.get("merge_size", base.merge_size),
            temporal_patch_size=processor.get("temporal_patch_size", base.temporal_patch_size),
            min_pixels=processor.get("min_pixels") or size.get("shortest_edge") or base.min_pixels,
            max_pixels=processor.get("max_pixels") or size.get("longest_edge") or base.max_pixels,
            source=f"{folder}'s processor" if processor else f"{base.source} ({folder} has no processor file)",
        )
    name = model.lower()
    if "-vl" not in name:
        return None
    return QWEN3_VL if "qwen3" in name else VisionSpec()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def object_store_bytes(memory_bytes: int | None = None) -> tuple[int, str]:
    """(bytes, how it was found) of the object store Ray gives a node started without --object-store-memory:
    a proportion of its RAM (30 %), capped (200 GB); both can be changed through Ray's environment variables."""
    from ray._private import ray_constants

    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    proportion = ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION
    cap = ray_constants.DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES
    store = min(int(memory_bytes * proportion), cap)
    ram = f"{memory_bytes / 1e9:.0f} GB RAM"
    return store, f"Ray's default on this machine: {proportion:.0%} of {ram}, at most {cap / 1e9:.0f} GB"


@dataclass(frozen=True)
class PayloadEstimate:
    """The most multimodal bytes one trajectory, and one step, can hand to training."""

    question_tokens: int  # image tokens of the largest question images of a row
    question_images: int
    tool_images: int  # images the tools can still add: per call x calls, within the per-trajectory limit
    tool_image_tokens: int  # tokens of one tool image at the tools' max_image_pixels
    bytes_per_token: int
    trajectories: int  # per step: --rollout.batch_size x --rollout.n_samples_per_prompt

    @property
    def trajectory_bytes(self) -> int:
        return (self.question_tokens + self.tool_images * self.tool_image_tokens) * self.bytes_per_token

    @property
    def step_bytes(self) -> int:
        return self.trajectory_bytes * self.trajectories


def estimate_payload(
    spec: VisionSpec,
    dtype: str,
    tools,
    max_turns: int,
    max_images_per_prompt: int,
    question_images: int,
    question_tokens: int,
    trajectories: int,
) -> PayloadEstimate:
    """The bound for `tools` (a ToolsConfig): every call but the last turn's returns `max_images_per_call` images
    of `max_image_pixels`, until the per-trajectory limit (and vLLM's per-prompt limit) is reached."""
    limit = min(tools.max_images_per_trajectory, max_images_per_prompt or tools.max_images_per_trajectory)
    tool_images = max(0, min(limit - question_images, tools.max_images_per_call * (max_turns - 1)))
    side = math.isqrt(tools.max_image_pixels)
    return PayloadEstimate(
        question_tokens=question_tokens,
        question_images=question_images,
        tool_images=tool_images,
        tool_image_tokens=spec.image_tokens(side, side),
        bytes_per_token=spec.bytes_per_token(dtype),
        trajectories=trajectories,
    )


def payload_warning(estimate: PayloadEstimate, dtype: str, store: int, store_source: str) -> str | None:
    """A warning naming the knobs when a step's payload, copied OBJECT_STORE_COPIES times, exceeds the store."""
    crossing = estimate.step_bytes * OBJECT_STORE_COPIES
    if crossing <= store:
        return None
    return (
        f"one step may hand {estimate.step_bytes / 1e9:.1f} GB of pixel_values to training ({estimate.trajectories} "
        f"trajectories x up to {estimate.trajectory_bytes / 1e6:.1f} MB: {estimate.question_images} question "
        f"image(s) of up to {estimate.question_tokens} tokens in all + {estimate.tool_images} tool images of "
        f"{estimate.tool_image_tokens} tokens, {estimate.bytes_per_token} B per image token in {dtype}), and it "
        f"crosses Ray's object store ~{OBJECT_STORE_COPIES}x per step: {crossing / 1e9:.0f} GB "
        f"against {store / 1e9:.0f} GB ({store_source}). Expect spilling, then a host OOM. Lower the agent's "
        "tools.max_images_per_call, tools.max_images_per_trajectory or tools.max_image_pixels (--agent.config), "
        "downscale question images (python -m openrlhf_tapo.agent.data --max-pixels), lower --rollout.batch_size "
        "x --rollout.n_samples_per_prompt, or start Ray with a larger --object-store-memory"
    )
