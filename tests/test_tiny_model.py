"""The offline tiny Qwen2.5-VL and Qwen3-VL: tokenizer, processor (no torchvision), OpenRLHF's loading path, the HF
engine."""

import asyncio
import sys

import pytest
import torch
from _agent_helpers import picture, tiny_vlm_dir

from openrlhf_tapo.agent.hf_engine import HFGenerationEngine
from openrlhf_tapo.task.tiny_model import (
    FAMILIES,
    MODEL_CLASSES,
    PROCESSOR_CLASSES,
    SPECIAL_TOKENS,
    load_tiny_vlm,
    tiny_config,
)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    path = tiny_vlm_dir(request.param)
    model, processor = load_tiny_vlm(path)
    return path, model, processor


def test_tokenizer_round_trips_and_keeps_special_tokens_atomic(tiny):
    _, _, processor = tiny
    tok = processor.tokenizer
    text = '<|im_start|>user\nÜber 42 °C — 東京? <tool_call>{"a": [1]}</tool_call><|im_end|>\n'
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=False) == text
    for token in [*SPECIAL_TOKENS, "<tool_call>", "</tool_call>"]:
        assert len(tok.encode(token, add_special_tokens=False)) == 1, token
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    rendered = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_processor_expands_image_tokens_to_the_grid(tiny):
    _, model, processor = tiny
    out = processor(
        text=["a <|vision_start|><|image_pad|><|vision_end|> b"],
        images=[picture(0, (84, 56))],
        add_special_tokens=False,
        return_tensors="pt",
    )
    grid = out["image_grid_thw"]
    (t, h, w) = grid[0].tolist()
    patch = model.config.vision_config.patch_size  # 14 (Qwen2.5-VL) or 16 (Qwen3-VL)
    # 84 x 56 px resized to whole 2 x 2 blocks of patches (28 / 32 px): 56 x 84 px for Qwen2.5-VL, 64 x 96 for Qwen3-VL
    assert (h * patch, w * patch) == {14: (56, 84), 16: (64, 96)}[patch] and t == 1
    assert out["pixel_values"].shape == (t * h * w, 3 * 2 * patch * patch)  # channels x temporal x patch area
    pads = (out["input_ids"][0] == processor.image_token_id).sum().item()
    assert pads == t * h * w // 4 and 4 <= pads <= 16  # pixel bounds of the tiny processor


def test_openrlhf_loading_path_works_without_torchvision(tiny):
    from openrlhf.utils.utils import get_tokenizer, is_vlm_model
    from transformers import AutoProcessor

    path, model, _ = tiny
    assert "torchvision" not in sys.modules
    assert is_vlm_model(str(path))
    auto = AutoProcessor.from_pretrained(str(path), trust_remote_code=True)
    assert isinstance(auto, PROCESSOR_CLASSES[model.config.model_type])
    tok = get_tokenizer(str(path), None, padding_side="left")
    assert hasattr(tok, "image_processor") and tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    assert "torchvision" not in sys.modules


def test_build_is_deterministic_for_a_seed(tiny):
    _, model, processor = tiny
    family = model.config.model_type
    torch.manual_seed(0)
    fresh = MODEL_CLASSES[family](tiny_config(processor.tokenizer, family=family))
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert model.config.text_config.vocab_size == len(processor.tokenizer)


def test_hf_engine_follows_vllm_conventions(tiny):
    from vllm import SamplingParams

    _, model, processor = tiny
    engine = HFGenerationEngine(model, processor)
    tok = processor.tokenizer
    prompt = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    collapsed = tok.encode(prompt, add_special_tokens=False)
    expanded = processor(text=[prompt], images=[picture(1)], add_special_tokens=False)["input_ids"][0]
    image = picture(1)

    async def run():
        greedy = SamplingParams(max_tokens=12, temperature=0.0, logprobs=0)
        a = await engine.generate(collapsed, greedy, multi_modal_data={"image": [image]})
        b = await engine.generate(list(expanded), greedy, multi_modal_data={"image": [image]})
        return a, b

    a, b = asyncio.run(run())
    out = a.outputs[0]
    # one placeholder per image or already expanded: same inputs to the model, same greedy tokens
    assert out.token_ids == b.outputs[0].token_ids and len(out.token_ids) <= 12
    assert out.finish_reason in ("stop", "length") and len(out.logprobs) == len(out.token_ids)
    assert all(lp[t].logprob <= 0 for lp, t in zip(out.logprobs, out.token_ids, strict=True))

    # stop strings: generation ends with the token that completes the first occurrence of one
    k = next(i for i, t in enumerate(out.token_ids) if t not in tok.all_special_ids)
    stop_text = tok.decode([out.token_ids[k]])
    stopped = asyncio.run(
        engine.generate(
            collapsed,
            SamplingParams(max_tokens=12, temperature=0.0, stop=[stop_text], include_stop_str_in_output=True),
            multi_modal_data={"image": [image]},
        )
    ).outputs[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop_text
    assert stopped.text.endswith(stop_text) and stopped.token_ids == out.token_ids[: len(stopped.token_ids)]
    assert len(stopped.token_ids) <= k + 1

    with pytest.raises(ValueError, match="image placeholders"):
        asyncio.run(engine.generate(collapsed, SamplingParams(max_tokens=2), multi_modal_data={"image": [image] * 2}))


def test_hf_engine_honours_bad_words(tiny):
    import copy

    from vllm import SamplingParams

    _, model, processor = tiny
    tok = processor.tokenizer
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    # A model that prefers <|image_pad|> everywhere: greedy decoding writes it unless it is banned.
    eager = copy.deepcopy(model)
    head = torch.nn.Linear(eager.lm_head.in_features, eager.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(eager.lm_head.weight)
        head.bias.zero_()
        head.bias[pad] = 1e4
    eager.lm_head = head
    engine = HFGenerationEngine(eager, processor)
    prompt = tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)

    async def run(**kw):
        out = await engine.generate(prompt, SamplingParams(max_tokens=6, temperature=0.0, **kw))
        return out.outputs[0].token_ids

    assert pad in asyncio.run(run())
    assert pad not in asyncio.run(run(bad_words=["<|image_pad|>"]))
