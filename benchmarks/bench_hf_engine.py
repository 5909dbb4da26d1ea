"""Throughput of HFGenerationEngine serving concurrent agent trajectories: batched vs one request at a time, one run.

    .venv/bin/python benchmarks/bench_hf_engine.py            # 64 trajectories x 3 turns
    .venv/bin/python benchmarks/bench_hf_engine.py --quick    # 16 trajectories

N trajectories run concurrently on one event loop (as the agent executor runs them in a rollout), each with one
question image and a ~200-token prompt on a tiny random Qwen2.5-VL (`build_tiny_vlm`: hidden 64, 2 layers). Each
turn generates up to 15 tokens (temperature 1, a seed per request, the vision tokens banned as the agent's
rollout bans them), then a simulated tool call sleeps `--latency`
seconds and appends a ~30-token tool response to the prompt; 3 turns. The same trajectories are served by:

- the batched engine (`max_batch` 64, the default);
- the engine before batching: `model.generate` on one request at a time (`_generate_with_hf`, in a worker thread);
- our decode loop one request at a time (`max_batch=1`).

Seeded requests sample the same tokens in all three (up to float near-ties), so the work is the same; printed: wall
time, requests/s, the batches' sizes, and the speedup of the batched engine over each one-at-a-time engine.
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from openrlhf_tapo.utils import cuda_stubs

cuda_stubs.install()

from vllm import SamplingParams  # noqa: E402

from openrlhf_tapo.agent.hf_engine import HFGenerationEngine  # noqa: E402
from openrlhf_tapo.agent.protocol import DEFAULT_INSTRUCTIONS, VISION_SPECIAL_TOKENS  # noqa: E402
from openrlhf_tapo.task.tiny_model import build_tiny_vlm, load_tiny_vlm  # noqa: E402

TURNS = 3
MAX_TOKENS = 15
TOOL_RESPONSE = (
    "<|im_end|>\n<|im_start|>user\n<tool_response>\n1. Eiffel Tower\nURL: u/1\n"
    "The Eiffel Tower is a wrought-iron tower in Paris.\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
)
CORPUS = [DEFAULT_INSTRUCTIONS, TOOL_RESPONSE, "Where is landmark 12? What colour is the big box?"] * 20


class OneAtATime:
    """The engine before batching: `model.generate` per request, in a worker thread, one at a time."""

    def __init__(self, engine: HFGenerationEngine):
        self.engine = engine
        self.requests = 0

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        self.requests += 1
        return await asyncio.to_thread(
            self.engine._generate_with_hf, prompt_token_ids, sampling_params, multi_modal_data
        )


async def trajectory(engine, prompt: list[int], image, response: list[int], seed: int, latency: float):
    ids, tokens = list(prompt), []
    for turn in range(TURNS):
        sp = SamplingParams(
            max_tokens=MAX_TOKENS, temperature=1.0, seed=seed * TURNS + turn, bad_words=list(VISION_SPECIAL_TOKENS)
        )
        out = (await engine.generate(ids, sp, multi_modal_data={"image": [image]})).outputs[0]
        tokens.append(out.token_ids)
        await asyncio.sleep(latency)  # the tool call
        ids += out.token_ids + response
    return tokens


async def run_all(engine, prompts, images, response, latency):
    start = time.perf_counter()
    runs = [trajectory(engine, prompts[i], images[i], response, i, latency) for i in range(len(prompts))]
    outs = await asyncio.gather(*runs)
    return time.perf_counter() - start, outs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 trajectories instead of 64")
    parser.add_argument("--n", type=int, default=None, help="trajectories")
    parser.add_argument("--latency", type=float, default=0.05, help="simulated tool latency in seconds")
    parser.add_argument("--max-batch", type=int, default=64)
    args = parser.parse_args(argv)
    n = args.n or (16 if args.quick else 64)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        model, processor = load_tiny_vlm(build_tiny_vlm(Path(tmp) / "model", CORPUS, seed=0))
    model.eval()
    tok = processor.tokenizer
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)) for _ in range(n)]
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    prompts = [
        tok.encode(
            f"<|im_start|>system\n{DEFAULT_INSTRUCTIONS}<|im_end|>\n<|im_start|>user\n{vision}"
            f"Where is landmark {i}?<|im_end|>\n<|im_start|>assistant\n",
            add_special_tokens=False,
        )
        for i in range(n)
    ]
    response = tok.encode(TOOL_RESPONSE, add_special_tokens=False)
    expanded = len(processor(text=[tok.decode(prompts[0])], images=[images[0]])["input_ids"][0])

    batched = HFGenerationEngine(model, processor, max_batch=args.max_batch)
    serial = HFGenerationEngine(model, processor, max_batch=1)
    reference = OneAtATime(HFGenerationEngine(model, processor))
    for engine in (batched, serial, reference):  # warm-up
        asyncio.run(run_all(engine, prompts[:2], images[:2], response, 0.0))
    batched.batch_sizes.clear()

    wall_batched, out_batched = asyncio.run(run_all(batched, prompts, images, response, args.latency))
    sizes = list(batched.batch_sizes)
    wall_reference, out_reference = asyncio.run(run_all(reference, prompts, images, response, args.latency))
    wall_serial, _ = asyncio.run(run_all(serial, prompts, images, response, args.latency))

    requests = n * TURNS
    tokens = sum(len(t) for traj in out_batched for t in traj)
    same = sum(a == b for x, y in zip(out_batched, out_reference, strict=True) for a, b in zip(x, y, strict=True))
    print(
        f"trajectories: {n} x {TURNS} turns of <= {MAX_TOKENS} new tokens, prompt {expanded} tokens at turn 1 "
        f"(+{MAX_TOKENS + len(response)} per turn), tool latency {args.latency * 1000:.0f} ms, "
        f"torch threads {torch.get_num_threads()}, {sys.platform}"
    )
    print(f"requests: {requests}, new tokens: {tokens}, same tokens as model.generate: {same}/{requests} requests")
    print(
        f"batched (max_batch {args.max_batch}):    wall {wall_batched:7.2f} s  {requests / wall_batched:7.1f} req/s  "
        f"batches {len(sizes)} (size median {statistics.median(sizes):.0f}, max {max(sizes)})"
    )
    print(f"one at a time (model.generate): wall {wall_reference:7.2f} s  {requests / wall_reference:7.1f} req/s")
    print(f"one at a time (max_batch 1):    wall {wall_serial:7.2f} s  {requests / wall_serial:7.1f} req/s")
    print(
        f"batched vs one at a time (model.generate, the engine before batching): {wall_reference / wall_batched:.2f}x"
    )
    print(f"batched vs one at a time (own decode loop, max_batch 1): {wall_serial / wall_batched:.2f}x")


if __name__ == "__main__":
    main()
