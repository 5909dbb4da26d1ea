"""HFGenerationEngine serves concurrent requests in batches, with each request's own sampling parameters.

The reference is `model.generate` on one request (`_generate_with_hf`, the engine before batching). The tiny model's
weights are redrawn with a larger scale so that greedy outputs differ between prompts and steps (at init it writes
the same token everywhere); on these prompts no two top tokens tie to float precision, so batched (left-padded)
decoding must give the very same tokens.
"""

import asyncio

import pytest
import torch
from _agent_helpers import picture, tiny_vlm_dir
from vllm import SamplingParams

from openrlhf_tapo.agent.hf_engine import HFGenerationEngine
from openrlhf_tapo.task.tiny_model import load_tiny_vlm

VISION = "<|vision_start|><|image_pad|><|vision_end|>"
PROMPTS = [
    (f"<|im_start|>user\n{VISION}hi<|im_end|>\n<|im_start|>assistant\n", [picture(1)]),
    (
        f"<|im_start|>user\nWhat colour is the big box? {VISION}answer<|im_end|>\n<|im_start|>assistant\n",
        [picture(2, (60, 90))],
    ),
    ("<|im_start|>user\nno image at all, just text<|im_end|>\n<|im_start|>assistant\n", []),
    (f"<|im_start|>user\n{VISION}{VISION}two<|im_end|>\n<|im_start|>assistant\n", [picture(3), picture(4, (100, 40))]),
]


@pytest.fixture(scope="module")
def tiny():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model, processor = load_tiny_vlm(tiny_vlm_dir())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:  # a peaked, input-dependent next-token distribution
                param.copy_(torch.randn(param.shape, generator=generator) * 2 / param.shape[-1] ** 0.5)
    yield model, processor
    torch.set_num_threads(before)


def requests(processor, sampling):
    tok = processor.tokenizer
    params = sampling if isinstance(sampling, list) else [sampling] * len(PROMPTS)
    return [
        (tok.encode(text, add_special_tokens=False), sp, {"image": images})
        for (text, images), sp in zip(PROMPTS, params, strict=True)
    ]


def serve(engine, batch):
    async def run():
        return await asyncio.gather(*[engine.generate(*request) for request in batch])

    return [out.outputs[0] for out in asyncio.run(run())]


def logprob_values(out):
    return [next(iter(lp.values())).logprob for lp in out.logprobs]


def test_batched_greedy_equals_model_generate_token_for_token(tiny):
    model, processor = tiny
    engine = HFGenerationEngine(model, processor, batch_wait_s=0.5, max_batch=len(PROMPTS))
    batch = requests(processor, SamplingParams(max_tokens=16, temperature=0.0, logprobs=0))
    outs = serve(engine, batch)
    assert engine.batch_sizes == [len(PROMPTS)]
    assert len({tuple(out.token_ids) for out in outs}) == len(PROMPTS)  # the prompts lead to different outputs
    for request, out in zip(batch, outs, strict=True):
        ref = engine._generate_with_hf(*request).outputs[0]
        assert out.token_ids == ref.token_ids and out.text == ref.text
        assert (out.finish_reason, out.stop_reason) == (ref.finish_reason, ref.stop_reason)
        assert logprob_values(out) == pytest.approx(logprob_values(ref), abs=1e-4)
    serial = HFGenerationEngine(model, processor, max_batch=1)
    assert [out.token_ids for out in serve(serial, batch)] == [out.token_ids for out in outs]
    assert serial.batch_sizes == [1] * len(PROMPTS)


def test_seeded_sample_does_not_depend_on_the_batch(tiny):
    model, processor = tiny
    seeded = [SamplingParams(max_tokens=12, temperature=1.0, top_p=0.95, seed=s) for s in (11, 12, 13, 14)]
    batch = requests(processor, seeded)
    engine = HFGenerationEngine(model, processor, batch_wait_s=0.5, max_batch=len(PROMPTS))
    together = serve(engine, batch)
    assert engine.batch_sizes == [len(PROMPTS)]
    for request, out in zip(batch, together, strict=True):
        alone = serve(engine, [request])[0]
        assert out.token_ids == alone.token_ids
        # and the same tokens as model.generate after torch.manual_seed(seed)
        assert out.token_ids == engine._generate_with_hf(*request).outputs[0].token_ids
    # the same request four times in one batch: four generators with one seed, four identical samples
    same = serve(engine, [batch[1]] * 4)
    assert all(out.token_ids == together[1].token_ids for out in same)
    # unseeded requests get their own streams
    unseeded = serve(engine, [(batch[1][0], SamplingParams(max_tokens=12, temperature=1.0), batch[1][2])] * 4)
    assert len({tuple(out.token_ids) for out in unseeded}) > 1


def test_mixed_batch_honours_each_rows_stop_strings_and_max_tokens(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    engine = HFGenerationEngine(model, processor, batch_wait_s=0.5, max_batch=len(PROMPTS))
    greedy = serve(engine, requests(processor, SamplingParams(max_tokens=16, temperature=0.0)))
    # row 0: a stop string completed by its 4th token (kept); row 1: stop string cut from the text;
    # row 2: max_tokens 3; row 3: sampled with a seed and logprobs, ended by max_tokens 9
    stop0 = tok.decode(greedy[0].token_ids[3:4])
    stop1 = tok.decode(greedy[1].token_ids[5:6])
    assert stop0.strip() and stop1.strip() and stop0 not in greedy[0].text[: greedy[0].text.index(stop0)]
    params = [
        SamplingParams(max_tokens=16, temperature=0.0, stop=[stop0], include_stop_str_in_output=True),
        SamplingParams(max_tokens=16, temperature=0.0, stop=[stop1, "never-seen"]),
        SamplingParams(max_tokens=3, temperature=0.0, logprobs=0),
        SamplingParams(max_tokens=9, temperature=0.8, top_k=20, seed=5, logprobs=1),
    ]
    batch = requests(processor, params)
    outs = serve(engine, batch)
    assert engine.batch_sizes[-1] == len(PROMPTS)
    for request, out in zip(batch, outs, strict=True):
        ref = engine._generate_with_hf(*request).outputs[0]
        assert (out.token_ids, out.text, out.finish_reason, out.stop_reason) == (
            ref.token_ids,
            ref.text,
            ref.finish_reason,
            ref.stop_reason,
        )
    first = greedy[0].text.index(stop0)
    assert outs[0].token_ids == greedy[0].token_ids[: len(outs[0].token_ids)] and len(outs[0].token_ids) <= 4
    assert outs[0].text == greedy[0].text[: first + len(stop0)] and outs[0].stop_reason == stop0
    assert outs[1].stop_reason == stop1 and not outs[1].text.endswith(stop1) and len(outs[1].token_ids) <= 6
    assert outs[2].token_ids == greedy[2].token_ids[:3] and outs[2].finish_reason == "length"
    assert len(outs[2].logprobs) == 3 and outs[0].logprobs is None
    assert len(outs[3].token_ids) == 9 and len(outs[3].logprobs) == 9 and outs[3].finish_reason == "length"


def test_concurrent_requests_take_fewer_model_passes_than_requests(tiny):
    model, processor = tiny
    engine = HFGenerationEngine(model, processor, max_batch=8)
    batch = requests(processor, SamplingParams(max_tokens=4, temperature=0.0)) * 5
    outs = serve(engine, batch)
    assert engine.requests == len(batch) and sum(engine.batch_sizes) == len(batch)
    assert engine.batches < len(batch) and max(engine.batch_sizes) > 1 and max(engine.batch_sizes) <= 8
    for i, out in enumerate(outs):
        assert out.token_ids == outs[i % len(PROMPTS)].token_ids


def test_a_bad_request_fails_alone(tiny):
    model, processor = tiny
    engine = HFGenerationEngine(model, processor, batch_wait_s=0.5, max_batch=3)
    good = requests(processor, SamplingParams(max_tokens=4, temperature=0.0))
    bad = (good[0][0], good[0][1], {"image": [picture(1), picture(2)]})  # one placeholder, two images

    async def run():
        return await asyncio.gather(*[engine.generate(*r) for r in (good[0], bad, good[2])], return_exceptions=True)

    outs = asyncio.run(run())
    assert isinstance(outs[1], ValueError) and "image placeholders" in str(outs[1])
    assert len(outs[0].outputs[0].token_ids) == 4 and len(outs[2].outputs[0].token_ids) == 4
    assert engine.batch_sizes == [2]


def test_bad_words_per_row_match_model_generate(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    engine = HFGenerationEngine(model, processor, batch_wait_s=0.5, max_batch=len(PROMPTS))
    greedy = serve(engine, requests(processor, SamplingParams(max_tokens=12, temperature=0.0)))
    params = []
    for i, out in enumerate(greedy):
        # a two-token word that tokenises back to its tokens: its 2nd token is banned right after its 1st
        ids = out.token_ids
        k = next(k for k in range(1, len(ids) - 1) if tok.encode(tok.decode(ids[k : k + 2])) == ids[k : k + 2])
        single = [tok.decode(ids[:1])] if i % 2 else []  # and on odd rows the first token everywhere
        params.append(SamplingParams(max_tokens=12, temperature=0.0, bad_words=[tok.decode(ids[k : k + 2]), *single]))
    batch = requests(processor, params)
    outs = serve(engine, batch)
    for request, out, free in zip(batch, outs, greedy, strict=True):
        assert out.token_ids == engine._generate_with_hf(*request).outputs[0].token_ids
        assert out.token_ids != free.token_ids


def test_requests_arriving_a_few_ms_apart_share_a_batch_and_a_cancelled_one_is_dropped(tiny):
    model, processor = tiny
    engine = HFGenerationEngine(model, processor)  # default gathering: a 10 ms quiet window
    batch = requests(processor, SamplingParams(max_tokens=4, temperature=0.0)) * 2

    async def late(i, request):
        await asyncio.sleep(0.002 * i)  # as trajectories reach the engine after building their prompts
        return await engine.generate(*request)

    async def run():
        outs = await asyncio.gather(*[late(i, r) for i, r in enumerate(batch)])
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.generate(*batch[0]), timeout=0.001)  # cancelled while queued
        return outs, await engine.generate(*batch[1])

    outs, after = asyncio.run(run())
    assert engine.batches < len(batch) and len(outs) == len(batch)
    assert after.outputs[0].token_ids == outs[1].outputs[0].token_ids


def test_a_training_model_with_gradient_checkpointing_decodes_in_eval_mode(tiny):
    model, processor = tiny
    engine = HFGenerationEngine(model, processor, batch_wait_s=0.5, max_batch=len(PROMPTS))
    batch = requests(processor, SamplingParams(max_tokens=6, temperature=0.0))
    expected = [out.token_ids for out in serve(engine, batch)]
    model.gradient_checkpointing_enable()
    model.train()
    try:
        assert [out.token_ids for out in serve(engine, batch)] == expected  # the KV cache is kept
        assert model.training
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
