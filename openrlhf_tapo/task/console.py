"""The demo's console: one line per stage with its time, progress bars for the long stages, and nothing else.

Libraries write to stdout/stderr at will (transformers and DeepSpeed logs, FutureWarnings, OpenRLHF's argument
dumps). For the run, `quiet_output(log_path)` (utils/library_output.py) points file descriptors 1 and 2 at a log
file, so all of that lands there, and hands back a stream on the original terminal, on which `Console` writes its
lines and tqdm bars.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm

from openrlhf_tapo.utils.library_output import quiet_output  # noqa: F401 (the demo's and the study's)

# `✨ Global step 3: {'rollout/reward_mean': 0.25, 'vllm_kl': np.float64(-7e-05), ...}`: the line OpenRLHF's
# PPOTrainer.fit logs once per training step
GLOBAL_STEP = re.compile(r"Global step (\d+): \{")
STATUS_ITEM = re.compile(r"'([\w/]+)': (?:np\.float(?:32|64)\()?(-?(?:\d+\.?\d*(?:e[+-]?\d+)?|nan|inf))")


def parse_global_step(line: str) -> dict[str, float] | None:
    """The step status of one OpenRLHF `Global step N: {...}` log line ({"step": N, key: value, ...}), else None."""
    match = GLOBAL_STEP.search(line)
    if match is None:
        return None
    status = {key: float(value) for key, value in STATUS_ITEM.findall(line[match.end() - 1 :])}
    status["step"] = int(match.group(1))
    return status


class Console:
    """Stage lines (`name ... 12.3 s  detail`) and progress bars, on `stream` (the terminal)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.start = time.time()

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[list[str]]:
        """Times the block; its one line is written when it ends, with what the block appended to the list."""
        started, details = time.time(), []
        yield details
        self.line(f"{name:<58} {time.time() - started:6.1f} s  {'; '.join(details)}".rstrip())

    def bar(self, total: int, desc: str, unit: str) -> tqdm:
        return tqdm(
            total=total,
            desc=f"  {desc}",
            unit=f" {unit}",
            file=self.stream,
            ncols=160,
            bar_format="{desc} {bar:20} {n_fmt}/{total_fmt}{unit} [{elapsed}]{postfix}",
            mininterval=0,
        )
