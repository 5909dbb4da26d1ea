"""The shared worker pool for CPU-heavy work (image decoding, hashing, cropping, resizing, BM25 scoring).

Tools and backends run inside the rollout actor's event loop, which also drives generation. Anything that
holds the CPU for more than a fraction of a millisecond goes through `run_cpu` so the loop keeps serving other
trajectories. A thread pool (not a process pool) because PIL's decode/resize/crop and numpy release the GIL
for their inner loops, and because images would otherwise be pickled across processes both ways, which costs
about as much as the work itself. One pool per process, sized by `OPENRLHF_TAPO_CPU_WORKERS` (default:
min(8, cpu_count)), separate from asyncio's default executor so blocking calls elsewhere cannot starve it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def cpu_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            default = min(8, os.cpu_count() or 1)
            workers = int(os.environ.get("OPENRLHF_TAPO_CPU_WORKERS", default))
            _pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tapo-cpu")
        return _pool


async def run_cpu(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` in the shared CPU pool and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(cpu_pool(), functools.partial(fn, *args, **kwargs))
