"""Load on the HTTP search service (loopback only): requests/s, p50/p99 latency, errors, and the service process's
memory before and after, at a fixed client concurrency. The service runs in its own process (as in production);
the client is aiohttp in this process. Baselines measured in the same run on the same index and queries: the
index's own `search_text` called directly (no HTTP, one thread), and `GET /health` over the same HTTP stack.

    .venv/bin/python benchmarks/bench_search_service.py [--quick] [--passages N] [--requests R] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from bench_search import make_queries, synthetic_corpus
from PIL import Image

from openrlhf_tapo.search.http_service import ServiceConfig, start_service
from openrlhf_tapo.search.local_index import LocalIndex

TOP_K = 5


def _serve(index_dir: str, max_concurrency: int, port_out, stop) -> None:
    """Service process: serve the index on 127.0.0.1 (a free port, sent back through `port_out`) until `stop`."""

    async def run():
        runner, port = await start_service(
            LocalIndex.load(index_dir), ServiceConfig(host="127.0.0.1", port=0, max_concurrency=max_concurrency)
        )
        port_out.send(port)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    asyncio.run(run())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, bodies: list[dict | None], concurrency: int) -> tuple[float, list[float], int]:
    """(wall seconds, per-request latencies in ms, errors) for `bodies` sent by `concurrency` workers; a body of
    None is a GET /health."""
    latencies, errors = [], 0
    queue = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker():
            nonlocal errors
            for body in queue:
                start = time.perf_counter()
                try:
                    if body is None:
                        request = session.get(f"{url}/health")
                    else:
                        path = "/v1/text_search" if "query" in body else "/v1/image_search"
                        request = session.post(url + path, json=body)
                    async with request as resp:
                        await resp.read()
                        errors += resp.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, errors


def report(name: str, wall: float, latencies: list[float], errors: int, concurrency: int) -> float:
    rps = len(latencies) / wall
    q = statistics.quantiles(latencies, n=100)
    print(
        f"{name:<28} {len(latencies):6d} requests  concurrency {concurrency:3d}  {rps:8.1f} req/s  "
        f"p50 {q[49]:7.2f} ms  p99 {q[98]:7.2f} ms  errors {errors}"
    )
    return rps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5k passages, 400 requests per phase")
    parser.add_argument("--passages", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--service-concurrency", type=int, default=16, help="the service's max_concurrency")
    args = parser.parse_args(argv)
    if args.quick:
        args.passages, args.requests = 5000, 400

    docs, vocab = synthetic_corpus(args.passages)
    queries = make_queries(docs, vocab, args.requests)
    rng = np.random.default_rng(2)
    images = [
        {"id": f"i{i}", "title": f"img {i}", "url": f"https://img/{i}", "image": Image.fromarray(pixels)}
        for i, pixels in enumerate(rng.integers(0, 256, (200, 48, 48, 3), dtype=np.uint8))
    ]
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) / "index"
        index = LocalIndex.build(docs, images, index_dir)

        start = time.perf_counter()
        for query in queries:
            index.search_text(query, TOP_K)
        direct_qps = len(queries) / (time.perf_counter() - start)
        print(
            f"corpus: {args.passages:,} passages, {len(images)} images; direct LocalIndex.search_text: "
            f"{direct_qps:.1f} queries/s (one thread, no HTTP)"
        )

        ctx = mp.get_context("spawn")
        port_in, port_out = ctx.Pipe(duplex=False)
        stop = ctx.Event()
        service = ctx.Process(target=_serve, args=(str(index_dir), args.service_concurrency, port_out, stop))
        service.start()
        try:
            if not port_in.poll(120):
                print("error: the service did not start within 120 s", file=sys.stderr)
                return 1
            url = f"http://127.0.0.1:{port_in.recv()}"
            asyncio.run(load(url, [{"query": q, "top_k": TOP_K} for q in queries[:50]], 8))  # warm-up
            before = rss_mib(service.pid)
            health = asyncio.run(load(url, [None] * args.requests, args.concurrency))
            text = asyncio.run(load(url, [{"query": q, "top_k": TOP_K} for q in queries], args.concurrency))
            ids = [{"image_id": f"i{i % len(images)}", "top_k": TOP_K} for i in range(args.requests // 2)]
            image = asyncio.run(load(url, ids, args.concurrency))
            after = rss_mib(service.pid)
        finally:
            stop.set()
            service.join(30)

    health_rps = report("GET /health (HTTP floor)", *health, args.concurrency)
    text_rps = report("POST /v1/text_search", *text, args.concurrency)
    report("POST /v1/image_search (id)", *image, args.concurrency)
    print(f"service memory (RSS): {before:.0f} MiB before load, {after:.0f} MiB after ({after - before:+.0f} MiB)")
    print(f"service text_search / direct search_text: {text_rps / direct_qps:.2f}x")
    print(f"service text_search / GET /health: {text_rps / health_rps:.2f}x")
    return 0 if health[2] + text[2] + image[2] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
