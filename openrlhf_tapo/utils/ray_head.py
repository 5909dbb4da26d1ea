"""A Ray head started on this machine for one job, and stopped with every process it started.

For the `ray job submit` tests (tests/test_ray_job_submit.py) and the GPU smoke (scripts/gpu_smoke.py): each head gets
its own temp dir and free ports, so it neither joins nor disturbs another Ray instance on the machine, and it is
stopped by killing its own process group, not by `ray stop` (which stops every Ray instance of the user here).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def kill_group(pgid: int, grace_s: float = 30.0) -> None:
    """SIGTERM the process group `pgid`, SIGKILL what is left after `grace_s`, and wait until it is gone."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


@contextlib.contextmanager
def ray_head(
    ray: str | Path, num_cpus: int, num_gpus: int, env: dict | None = None, object_store_mb: int = 500
) -> Iterator[tuple[str, dict]]:
    """`ray start --head` (the `ray` executable `ray`) with `num_gpus` GPUs; yields (dashboard address for `ray job`,
    the environment to run `ray` commands with). The GPUs are fake on a CPU machine: Ray only counts them."""
    env = {**(os.environ if env is None else env)}
    # The dashboard gives each of its modules 30 s to start; on a loaded machine they take longer (seen under load
    # average 12 on 2 cores: "Module MetricsHead failed to start").
    env.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "300")
    for attempt in (1, 2):  # Ray's start-up has more timeouts of its own: one more try, in a fresh temp dir
        pgid, address, failure = _start(ray, num_cpus, num_gpus, env, object_store_mb)
        if failure is None:
            break
        kill_group(pgid)
        if attempt == 2:
            raise RuntimeError(f"ray start failed twice; the second time:\n{failure[-3000:]}")
    try:
        yield address, env
    finally:
        kill_group(pgid)


def _start(ray, num_cpus: int, num_gpus: int, env: dict, object_store_mb: int) -> tuple[int, str, str | None]:
    """`ray start --head` in its own session: (its process group, its dashboard address, None), or with its output
    as the third item when it failed. Sets env's RAY_TMPDIR to this head's temp dir."""
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    gcs, dashboard, client, agent = free_ports(4)  # the ports with fixed defaults, which another head may hold
    env["RAY_TMPDIR"] = temp_dir
    start = [
        str(ray), "start", "--head", "--port", str(gcs), "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
        "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus),
        "--object-store-memory", str(object_store_mb * 2**20),
        "--temp-dir", temp_dir, "--disable-usage-stats", "--include-dashboard", "true",
    ]  # fmt: skip
    # its own session: every process of this head is in the process group of `ray start`, and only those are killed
    proc = subprocess.Popen(start, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        return proc.pid, address, "ray start did not return within 600 s"
    failure = None if proc.returncode == 0 else f"exit {proc.returncode}:\n{out.decode(errors='replace')}"
    return proc.pid, address, failure
