"""Rollout throughput of our AgentExecutor against OpenRLHF 0.11.2's MultiTurnAgentExecutor, same work, one run.

    .venv/bin/python benchmarks/bench_agent_rollout.py            # 512 trajectories x 3 tool calls
    .venv/bin/python benchmarks/bench_agent_rollout.py --quick    # 64 trajectories

Both executors run N trajectories concurrently on one event loop (as in a vLLM rollout actor), each with one question
image (84x56) and 3 tool calls answered by a simulated backend that sleeps `--latency` seconds, then an answer. The
engine returns scripted turns instantly, so the figures are the executors' own cost: prompt and image processing,
tokenisation, parsing, tool plumbing, reward. The baseline is OpenRLHF's bundled executor with an `AgentInstance`
doing the same sleep and returning the same kind of text (no tools layer, no images returned).
Ideal wall time = 3 x latency (every trajectory's calls overlap); with many trajectories the wall time is bound by
the executors' CPU work instead (tokenising prompts and tool responses, image processing), shown per trajectory.
Printed: wall time, trajectories/s, tool calls/s, ratio vs ideal for both, and ours / OpenRLHF's.
"""

import argparse
import asyncio
import time

import numpy as np
import torch
from PIL import Image

from openrlhf_tapo.utils import cuda_stubs

cuda_stubs.install()

from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor  # noqa: E402
from vllm import SamplingParams  # noqa: E402

from openrlhf_tapo.agent.config import AgentConfig  # noqa: E402
from openrlhf_tapo.agent.executor import AgentExecutor  # noqa: E402
from openrlhf_tapo.agent.hf_engine import CompletionOutput, RequestOutput  # noqa: E402
from openrlhf_tapo.agent.protocol import DEFAULT_INSTRUCTIONS, build_prompt  # noqa: E402
from openrlhf_tapo.search.base import SearchBackend, TextHit  # noqa: E402
from openrlhf_tapo.task.tiny_model import build_processor, build_tokenizer  # noqa: E402
from openrlhf_tapo.tools.registry import build_tool_runner  # noqa: E402

CALLS = 3
TURNS = [
    f'Let me search. <tool_call>{{"name": "text_search", "arguments": {{"query": "landmark {i}"}}}}</tool_call>'
    for i in range(CALLS)
] + ["<answer>Paris</answer>"]
PASSAGE = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. " * 3


class SleepyBackend(SearchBackend):
    name = "sleepy"

    def __init__(self, latency: float):
        self.latency = latency

    async def text_search(self, query, top_k):
        await asyncio.sleep(self.latency)
        return [TextHit(title=f"Result {i}", url=f"https://r/{i}", text=PASSAGE) for i in range(top_k)]

    async def image_search(self, image, top_k, *, image_url=None):
        return []


class ScriptedEngine:
    """vLLM's generate contract; the turn to return is picked by how many turns the prompt already holds."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.turn_tokens = [tokenizer.encode(t, add_special_tokens=False) for t in TURNS]
        self.marker = tokenizer.convert_tokens_to_ids("<|im_start|>")

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        # system, user, assistant headers, then one user + one assistant header per tool response
        turn = min((prompt_token_ids.count(self.marker) - 3) // 2, len(TURNS) - 1)
        tokens = self.turn_tokens[turn][: sampling_params.max_tokens]
        return RequestOutput(list(prompt_token_ids), [CompletionOutput(0, TURNS[turn], tokens, "stop")])


def make_baseline_instance(latency: float):
    class SleepyInstance(AgentInstanceBase):
        def __init__(self, *args, **kwargs):
            self.calls = 0

        async def step(self, state_dict, **kwargs):
            text = state_dict["action_text"]
            if "<answer>" in text:
                return {
                    "rewards": torch.tensor(1.0),
                    "scores": torch.tensor(1.0),
                    "environment_feedback": "",
                    "done": True,
                }
            await asyncio.sleep(latency)
            self.calls += 1
            body = "\n\n".join(f"{i}. Result {i}\nURL: https://r/{i}\n{PASSAGE}" for i in range(5))
            feedback = f"<|im_end|>\n<|im_start|>user\n<tool_response>\n{body}\n</tool_response><|im_end|>\n" + (
                "<|im_start|>assistant\n"
            )
            return {"rewards": torch.tensor(0.0), "environment_feedback": feedback, "done": False}

    return SleepyInstance


async def run_all(executor, n, prompts, processor, engine, images, max_len):
    # One SamplingParams per trajectory: OpenRLHF's MultiTurnAgentExecutor writes max_tokens into the object it gets.
    params = [SamplingParams(max_tokens=256, temperature=1.0, logprobs=None) for _ in range(n)]
    start = time.perf_counter()
    outs = await asyncio.gather(
        *(executor.execute(prompts[i], "Paris", params[i], max_len, processor, engine, [images[i]]) for i in range(n))
    )
    return time.perf_counter() - start, outs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 trajectories instead of 512")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--latency", type=float, default=0.1, help="simulated tool latency in seconds")
    args = parser.parse_args(argv)
    n = args.n or (64 if args.quick else 512)
    torch.set_num_threads(1)

    tokenizer = build_tokenizer([DEFAULT_INSTRUCTIONS, PASSAGE, *TURNS] * 20)
    processor = build_processor(tokenizer)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)) for _ in range(n)]
    engine = ScriptedEngine(tokenizer)
    max_len = 8192

    config = AgentConfig.from_dict({"tools": {"enabled": ["text_search", "zoom"]}})
    ours = AgentExecutor(config, runner=build_tool_runner(config.tools, backend=SleepyBackend(args.latency)))
    schemas = ours.runner.schemas()
    # OpenRLHF's executor gets the same fully rendered prompt our executor builds.
    rendered = [build_prompt(f"Where is landmark {i}?", 1, schemas) for i in range(n)]
    baseline = MultiTurnAgentExecutor(make_baseline_instance(args.latency))

    asyncio.run(run_all(ours, min(n, 8), [f"Q{i}?" for i in range(n)], processor, engine, images, max_len))  # warm-up
    wall_ours, outs = asyncio.run(
        run_all(ours, n, [f"Where is landmark {i}?" for i in range(n)], processor, engine, images, max_len)
    )
    wall_base, base_outs = asyncio.run(run_all(baseline, n, rendered, processor, engine, images, max_len))

    calls = sum(o["extra_logs"]["tool_calls"] for o in outs)
    assert calls == n * CALLS and all(o["extra_logs"]["answered"] == 1 for o in outs), "rollouts did not complete"
    assert all(len(o["action_ranges"]) == CALLS + 1 for o in base_outs)
    ideal = CALLS * args.latency
    print(f"trajectories: {n}, tool calls each: {CALLS}, simulated latency {args.latency * 1000:.0f} ms")
    print(f"ideal wall time (all calls overlap): {ideal:.3f} s")
    print(f"ours:     wall {wall_ours:.3f} s  {n / wall_ours:8.1f} traj/s  {calls / wall_ours:8.1f} calls/s")
    print(f"openrlhf: wall {wall_base:.3f} s  {n / wall_base:8.1f} traj/s  {n * CALLS / wall_base:8.1f} calls/s")
    print(
        f"executor time per trajectory beyond the ideal: ours {(wall_ours - ideal) / n * 1000:.1f} ms, "
        f"openrlhf {(wall_base - ideal) / n * 1000:.1f} ms"
    )
    print(f"ours vs ideal: {wall_ours / ideal:.2f}x")
    print(f"openrlhf MultiTurnAgentExecutor vs ideal: {wall_base / ideal:.2f}x")
    print(f"ours / openrlhf MultiTurnAgentExecutor: {wall_ours / wall_base:.2f}x")


if __name__ == "__main__":
    main()
