"""The CPU study's runs in seed-major order, `--workers` at a time: inline in this process for one worker (the bar
shows each run's steps), else in a pool of spawned processes, each loading the task and the warm start once. Each
finished run is appended to OUT/results.jsonl, one line per run, so separate commands can share one OUT."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

from openrlhf_tapo.runners.study_runs import Study, prepare, read_results, run_one


class InlineExecutor:
    """`submit` runs the call at once in this process (one worker: the bar can then show each run's steps)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # re-raised by `result()`, as a pool's future does
            future.set_exception(e)
        return future


_WORKER_STUDY: Study | None = None  # a pool process's study, loaded once by `_init_worker`


def _init_worker(args, out: Path) -> None:
    """A pool process: its output (libraries' and the run's step lines) appended to OUT/study.log, `--threads`
    torch threads, the task and warm start loaded once."""
    global _WORKER_STUDY
    log = (out / "study.log").open("a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    from openrlhf_tapo.utils import cuda_stubs

    cuda_stubs.install()
    import torch

    torch.set_num_threads(args.threads)
    _WORKER_STUDY = prepare(args, out, print)


def _run_in_worker(arm: str, seed: int, args):
    return run_one(arm, seed, _WORKER_STUDY, args, print)


def run_all(study: Study, args, planned: list[tuple[str, int]], start: float, log, terminal) -> str:
    """Run the planned (arm, seed) runs OUT has not finished, in order, `--workers` at a time, under a progress bar
    on `terminal`; returns how the loop ended."""
    from tqdm import tqdm

    finished = {(r.arm, r.seed) for r in read_results(study.out)}
    queue = [run for run in planned if run not in finished]
    log(f"runs: {len(finished & set(planned))} of {len(planned)} already finished, {len(queue)} to run")
    stopped = "All planned runs finished."
    with tqdm(total=len(queue), desc="runs", unit="run", file=terminal, dynamic_ncols=True) as bar:
        if args.workers == 1:
            executor = contextlib.nullcontext(InlineExecutor())

            def submit(pool, arm: str, seed: int) -> Future:
                def step_done(line: str) -> None:  # "  step 3/12: reward ..." -> "step 3/12"
                    print(line, flush=True)
                    bar.set_postfix_str(f"{arm} seed {seed} {line.strip().split(':')[0]}")

                return pool.submit(run_one, arm, seed, study, args, step_done)
        else:
            context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads
            executor = ProcessPoolExecutor(args.workers, context, _init_worker, (args, study.out))

            def submit(pool, arm: str, seed: int) -> Future:
                return pool.submit(_run_in_worker, arm, seed, args)

        with executor as pool:
            pending: dict[Future, tuple[str, int]] = {}
            while queue or pending:
                while queue and len(pending) < args.workers:
                    arm, seed = queue.pop(0)
                    if (arm, seed) in {(r.arm, r.seed) for r in read_results(study.out)}:  # another process ran it
                        bar.update(1)
                        continue
                    if args.budget_min is not None and (time.time() - start) / 60 > args.budget_min:
                        stopped = f"Stopped by --budget-min {args.budget_min:g} before {arm} seed {seed}."
                        log(stopped)
                        queue.clear()
                        break
                    bar.set_postfix_str(f"{arm} seed {seed}")  # inline: the run starts now, its steps follow
                    pending[submit(pool, arm, seed)] = (arm, seed)
                    if args.workers > 1:
                        bar.set_postfix_str("running " + ", ".join(f"{a} seed {s}" for a, s in pending.values()))
                done, _ = wait(pending, return_when=FIRST_COMPLETED) if pending else (set(), None)
                for future in done:
                    del pending[future]
                    result = future.result()
                    with (study.out / "results.jsonl").open("a") as f:  # one line per run: safe with other processes
                        f.write(json.dumps(result.to_json()) + "\n")
                    bar.update(1)
                    log(
                        f"{result.arm} seed {result.seed}: eval accuracy sampled {result.sampled_accuracy:.3f}, "
                        f"greedy {result.greedy_accuracy:.3f}; correctable {result.failing_traj_correctable:.3f} "
                        f"({result.seconds / 60:.1f} min)"
                    )
    return stopped
