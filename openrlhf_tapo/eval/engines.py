"""Generation engines for evaluation, both with the `generate` contract of OpenRLHF's vLLM rollout actor.

- `vllm`: vLLM's `AsyncLLMEngine` (real vLLM only; the CPU import stub of `utils.cuda_stubs` does not count), with
  the same token-in/token-out call `RolloutRayActor.generate` makes (image pad runs collapsed, `TokensPrompt`).
- `hf`: `agent.hf_engine.HFGenerationEngine` on a transformers model (CPU or one GPU), requests in batches.
"""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

from openrlhf_tapo.utils import cuda_stubs

BACKENDS = ("auto", "vllm", "hf")


def real_vllm_available() -> bool:
    """True when `vllm` imports for real (not the CPU stub)."""
    return cuda_stubs.real_module_available("vllm")


def is_vision_model(model_dir: str | Path) -> bool:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return "vision_config" in config


def load_processor(model_dir: str | Path):
    """The model's processor (VLM) or tokenizer, as OpenRLHF's `get_tokenizer` would load it.

    `AutoProcessor` for a stock Qwen2.5-VL imports torchvision (a CUDA wheel on PyPI that breaks CPU torch): when
    it cannot load, the image-only processor of `task.tiny_model` is used, which reads any Qwen2-VL-family folder.
    """
    from transformers import AutoProcessor, AutoTokenizer

    if not is_vision_model(model_dir):
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    try:
        processor = AutoProcessor.from_pretrained(str(model_dir), trust_remote_code=True)
        if getattr(processor, "image_processor", None) is not None:
            return processor
        # a folder with a tokenizer but no processor files: AutoProcessor returns the bare tokenizer
    except (ImportError, RuntimeError, OSError, ValueError):
        pass
    from openrlhf_tapo.task.tiny_model import load_processor as load_image_only_processor

    try:
        return load_image_only_processor(model_dir)
    except OSError as err:
        raise OSError(
            f"{model_dir} is a vision-language model without its image processor's files ({err}). A checkpoint saved "
            "by OpenRLHF has only the tokenizer: copy the processor files of the model it was trained from with "
            '`python -c \'from openrlhf_tapo.eval.checkpoint import complete_checkpoint as c; c("MODEL", "CKPT")\'` '
            "(our launcher does this for the checkpoints it writes)"
        ) from err


class VLLMEngine:
    """`await engine.generate(prompt_token_ids, sampling_params, multi_modal_data=None)` on vLLM's async engine."""

    def __init__(self, model_dir: str | Path, processor, **engine_kwargs):
        import vllm

        args = dict(model=str(model_dir), trust_remote_code=True, seed=0)
        args.update(engine_kwargs)
        self.llm = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**args))
        tokenizer = getattr(processor, "tokenizer", processor)
        pads = [tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")]
        self._mm_pad_token_ids = {t for t in pads if isinstance(t, int) and t != tokenizer.unk_token_id}

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        from openrlhf.utils.vlm_utils import dedup_media_tokens
        from vllm.inputs import TokensPrompt
        from vllm.utils import random_uuid

        if multi_modal_data and self._mm_pad_token_ids:
            prompt_token_ids = dedup_media_tokens(list(prompt_token_ids), self._mm_pad_token_ids)
        prompt = TokensPrompt(prompt_token_ids=list(prompt_token_ids))
        if multi_modal_data:
            prompt["multi_modal_data"] = multi_modal_data
        final = None
        async for output in self.llm.generate(prompt, deepcopy(sampling_params), request_id=random_uuid()):
            final = output
        return final


def load_engine(
    model_dir: str | Path, backend: str = "auto", dtype: str = "float32", max_images: int | None = None, **vllm_kwargs
):
    """(engine, processor, backend used). `auto` takes vLLM when it is really installed, else transformers.

    `max_images`: images one request may hold (the agent's tools.max_images_per_trajectory), vLLM's
    `limit_mm_per_prompt` for a vision model; vLLM's own default (999 per modality) makes it profile and reserve
    memory for that many."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"--model {model_dir}: not a Hugging Face model directory (no config.json)")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "vllm" if real_vllm_available() else "hf"
    processor = load_processor(model_dir)
    if backend == "vllm":
        if not real_vllm_available():
            raise RuntimeError("--backend vllm: vLLM is not installed (only the CPU import stub); use --backend hf")
        if max_images is not None and is_vision_model(model_dir):
            vllm_kwargs.setdefault("limit_mm_per_prompt", {"image": max_images})
        return VLLMEngine(model_dir, processor, dtype=dtype, **vllm_kwargs), processor, "vllm"

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from openrlhf_tapo.agent.hf_engine import HFGenerationEngine

    cls = AutoModelForImageTextToText if is_vision_model(model_dir) else AutoModelForCausalLM
    model = cls.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    model.eval()
    return HFGenerationEngine(model, processor), processor, "hf"
