"""Tool-layer throughput: 1024 trajectories x 3 tool calls through ToolRunner against a simulated backend with
100 ms latency, compared with the ideal calls / concurrency x latency; then cache-hit throughput against the
same calls with a zero-latency backend and no cache (the tool layer's own overhead), measured in the same run.

    .venv/bin/python benchmarks/bench_tools.py [--quick] [--trajectories N] [--concurrency C] [--latency S]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from openrlhf_tapo.search.base import ImageHit, SearchBackend, TextHit
from openrlhf_tapo.tools import ToolCache, ToolContext, ToolRunner, ToolsConfig
from openrlhf_tapo.tools.registry import build_tools

THUMBS = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(3)]
QUESTION = [
    Image.fromarray(np.random.default_rng(100 + i).integers(0, 256, (256, 256, 3), dtype=np.uint8)) for i in range(64)
]


class SimulatedBackend(SearchBackend):
    name = "simulated"

    def __init__(self, latency: float):
        self.latency = latency

    async def text_search(self, query, top_k):
        await asyncio.sleep(self.latency)
        return [TextHit(f"Title {i}", f"https://x/{i}", f"passage {i} for {query} " * 8) for i in range(top_k)]

    async def image_search(self, image, top_k, *, image_url=None):
        await asyncio.sleep(self.latency)
        return [ImageHit(f"Image {i}", f"https://i/{i}", THUMBS[i % 3]) for i in range(top_k)]


async def run_trajectories(runner: ToolRunner, n: int, concurrency: int, text_only: bool = False) -> tuple[float, int]:
    """n trajectories, at most `concurrency` at once, each: text_search, image_search (or a third text_search
    with text_only), text_search."""
    slots = asyncio.Semaphore(concurrency)
    errors = 0

    async def trajectory(t: int):
        nonlocal errors
        async with slots:
            ctx = ToolContext(images={"img_0": QUESTION[t % len(QUESTION)]})
            for name, args in (
                ("text_search", {"query": f"question {t} entity"}),
                ("text_search", {"query": f"question {t} more"}) if text_only else ("image_search", {}),
                ("text_search", {"query": f"question {t} follow up"}),
            ):
                out = await runner.call(name, args, ctx)
                errors += out.error is not None

    start = time.perf_counter()
    await asyncio.gather(*(trajectory(t) for t in range(n)))
    return time.perf_counter() - start, errors


def make_runner(latency: float, cache: ToolCache | None) -> ToolRunner:
    config = ToolsConfig.from_dict({"text_search": {"top_k": 5}, "image_search": {"top_k": 3}})
    return ToolRunner(build_tools(config, SimulatedBackend(latency)), config, cache)


async def main_async(args) -> int:
    n, lat = args.trajectories, args.latency
    calls = 3 * n
    # The tool layer's own CPU cost per call (zero-latency backend, no cache): wall time can never go below
    # calls x this / cores, whatever the concurrency.
    base_wall, _ = await run_trajectories(make_runner(0.0, None), n, max(args.concurrency))
    print(f"tool-layer overhead: {calls / base_wall:,.0f} calls/s with a zero-latency backend ({base_wall:.3f} s)")
    worst = 0.0
    for c in args.concurrency:
        ideal = calls / c * lat
        wall, errors = await run_trajectories(make_runner(lat, None), n, c)
        worst = max(worst, wall / ideal)
        print(
            f"{n} trajectories x 3 calls = {calls} calls, concurrency {c}, latency {lat * 1000:.0f} ms: "
            f"wall {wall:.3f} s, ideal {ideal:.3f} s, ratio {wall / ideal:.3f} (floor <= 1.2), "
            f"{calls / wall:,.0f} calls/s, errors {errors}"
        )

    c = max(args.concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        cache = ToolCache(Path(tmp) / "bench.sqlite")
        fill_wall, _ = await run_trajectories(make_runner(lat, cache), n, c)  # misses (+ image hits), writes
        hit_wall, hit_errors = await run_trajectories(make_runner(lat, cache), n, c)  # all hits
        stats = cache.stats()
        await run_trajectories(make_runner(lat, cache), n, c, text_only=True)  # fills the text-only keys
        text_wall, _ = await run_trajectories(make_runner(lat, cache), n, c, text_only=True)  # text hits only
    miss_wall = calls / c * lat
    print(
        f"cache ({stats['cache_hits']} hits / {stats['cache_misses']} misses, errors {hit_errors}), concurrency {c}:"
    )
    print(f"  first pass (backend + cache writes): {calls / fill_wall:,.0f} calls/s ({fill_wall:.3f} s)")
    print(
        f"  second pass, all hits: {calls / hit_wall:,.0f} calls/s ({hit_wall:.3f} s) = "
        f"{fill_wall / hit_wall:.1f}x the first pass, {miss_wall / hit_wall:.1f}x the backend's ideal, "
        f"{base_wall / hit_wall:.2f}x the zero-latency no-cache throughput"
    )
    print(f"  text-only trajectories, all hits: {calls / text_wall:,.0f} calls/s ({text_wall:.3f} s)")
    return 0 if worst <= 1.2 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 trajectories")
    parser.add_argument("--trajectories", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args(argv)
    if args.quick:
        args.trajectories, args.concurrency = 128, [32]
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
