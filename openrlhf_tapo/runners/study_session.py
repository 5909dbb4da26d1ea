"""One study command on OUT, start to report: everything the libraries print goes to OUT/study.log and the terminal
gets the study's lines and its bar; the settings are checked against OUT's, the task, warm start and gates are made
once, the planned runs OUT has not finished run (study_pool.py), and the report covers every planned run finished."""

from __future__ import annotations

import json
import time
from pathlib import Path

from openrlhf_tapo.runners.study_plan import check_config, planned_runs, resolve_defaults
from openrlhf_tapo.runners.study_pool import run_all
from openrlhf_tapo.runners.study_report import write_report
from openrlhf_tapo.runners.study_runs import collapse_gate, ensure_gates, prepare, read_results


def run_study(args) -> Path:
    """The study command on OUT (`args`: cli/study.py's parsed flags): the runs it plans that OUT has not finished,
    then the report of every planned run finished so far; returns the report's path."""
    from openrlhf_tapo.task.console import quiet_output
    from openrlhf_tapo.utils import cuda_stubs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only and not (out / "gates.json").is_file():
        raise SystemExit(f"study: --report-only: {out} has no gates.json (no study was started there)")
    planned = planned_runs(args)
    start = time.time()
    stopped = "All planned runs finished."
    # everything the libraries print goes to OUT/study.log; the terminal gets the study's lines and its bar
    with quiet_output(out / "study.log") as terminal:
        cuda_stubs.install()  # before OpenRLHF's trainer modules are imported (no-op where vllm / flash_attn import)
        resolve_defaults(args)  # imports torch and OpenRLHF, which print
        check_config(args, out)
        from tqdm import tqdm

        def log(msg: str) -> None:
            line = f"[{(time.time() - start) / 60:5.1f} min] {msg}"
            print(line, flush=True)
            tqdm.write(line, file=terminal)

        if not args.report_only:
            import torch

            torch.set_num_threads(args.threads)
            study = prepare(args, out, log)
            ensure_gates(study, args, log)
            stopped = run_all(study, args, planned, start, log, terminal)
        collapse = collapse_gate(out, log)
    results = [r for r in read_results(out) if (r.arm, r.seed) in set(planned)]
    if len(results) < len(planned) and stopped.startswith("All"):
        stopped = "Partial: the remaining (arm, seed) runs have not run yet."
    gates = json.loads((out / "gates.json").read_text())
    return write_report(results, gates, args, out, len(planned), stopped, collapse)
