"""Pausing Python's cyclic garbage collector around an allocation-heavy pass of pure containers."""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def cyclic_gc_paused():
    """Pause Python's cyclic garbage collector (restored on exit, also on error).

    TAPO's matcher and GiGPO's anchor states allocate a few containers per call, turn and group, none of them in a
    reference cycle (reference counting frees them). With the collector on, those allocations trigger collections
    that traverse the whole heap again and again, which made the passes grow faster than the batch (TAPO's matching
    x10 for a x8 batch, GiGPO's x12.7; x7-8 and x8.4 with the collector paused: benchmarks/bench_tapo.py,
    bench_estimators.py). A pause covers one pass: tens to hundreds of milliseconds. Also a decorator
    (`@cyclic_gc_paused()`), as every `contextmanager`.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
