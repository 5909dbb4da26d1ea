"""TAPO's mechanism study: GRPO / SAPO / GSPO-token with and without TAPO on a controlled tool-use environment.

    python -m openrlhf_tapo.cli.simulate --out runs/sim            # part 1: the whole study (docs/results.md §1)
    python -m openrlhf_tapo.cli.simulate --out runs/sim_quick --quick
    python -m openrlhf_tapo.cli.simulate --grid multicall --out runs/sim_multicall   # part 2 (also with --quick)

Each grid cell (regime x group size x lr x arm; part 1: openrlhf_tapo/sim/mechanism_study.py, part 2:
openrlhf_tapo/sim/multicall_study.py) trains one tabular policy per seed (openrlhf_tapo/sim/train.py) with
OpenRLHF's own group_norm advantages and the project's tapo_correct, and is saved as OUT/runs/<cell>.json (part 2:
OUT/cells/<cell>.json): every run's curves and final metrics, TAPO's per-step statistics, the configuration. A
rerun with the same OUT skips finished cells, so a killed study continues where it stopped. Then OUT/report.md,
OUT/summary.json and the figures OUT/sim_*.png (part 2: OUT/multicall_*.png) are written from every cell there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

GRIDS = ("mechanism", "multicall")  # part 1, part 2
CELLS_DIR = {"mechanism": "runs", "multicall": "cells"}


def _design(grid: str):
    """(regimes, arms, group sizes, seeds) of a grid's design module."""
    if grid == "multicall":
        from openrlhf_tapo.sim import multicall_study as design

        return design.REGIMES, design.ARMS, (design.GROUP_SIZE,), design.SEEDS
    from openrlhf_tapo.sim import mechanism_study as design
    from openrlhf_tapo.sim.env import REGIMES

    return REGIMES, design.ARMS, design.GROUP_SIZES, design.SEEDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from openrlhf_tapo.sim.train import TrainConfig

    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=GRIDS, default="mechanism", help="mechanism: part 1; multicall: part 2")
    p.add_argument("--out", default=None, help="output folder (default runs/sim or runs/sim_multicall)")
    p.add_argument("--regimes", default=None, help="comma list of the grid's regimes (default: all)")
    p.add_argument("--arms", default=None, help="comma list of the grid's arms (default: all)")
    p.add_argument("--group-sizes", default=None, help="comma list of GRPO group sizes (default: the grid's)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1, paired across arms (default 20)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="RL steps per run")
    p.add_argument("--trajectories", type=int, default=defaults.trajectories, help="rollouts per step and run")
    p.add_argument("--no-sensitivity", action="store_true", help="skip part 1's lr sensitivity cells")
    p.add_argument("--quick", action="store_true", help="4 seeds, 40 steps, G = 8, no sensitivity (smoke run)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report and figures from the cells")
    args = p.parse_args(argv)
    REGIMES, ARMS, group_sizes, seeds = _design(args.grid)
    args.out = args.out or {"mechanism": "runs/sim", "multicall": "runs/sim_multicall"}[args.grid]
    args.seeds = len(seeds) if args.seeds is None else args.seeds
    args.group_sizes = args.group_sizes or ",".join(map(str, group_sizes))
    if args.quick:
        args.seeds, args.steps, args.group_sizes, args.no_sensitivity = 4, 40, "8", True
    args.regimes = args.regimes.split(",") if args.regimes else list(REGIMES)
    args.arms = args.arms.split(",") if args.arms else list(ARMS)
    for name, given, known in (("--regimes", args.regimes, REGIMES), ("--arms", args.arms, ARMS)):
        unknown = [x for x in given if x not in known]
        if unknown:
            p.error(f"{name}: unknown {unknown}; choose from {', '.join(known)}")
    try:
        args.group_sizes = [int(g) for g in args.group_sizes.split(",")]
    except ValueError:
        p.error(f"--group-sizes must be a comma list of integers, got {args.group_sizes!r}")
    if args.seeds < 2:
        p.error("--seeds must be >= 2 (confidence intervals need two runs)")
    return args


def _run_cell(cell, args, out_file: Path, advantage_fn, on_step) -> None:
    from openrlhf_tapo.sim.train import TrainConfig, train

    REGIMES, ARMS, _, _ = _design(args.grid)
    config = TrainConfig(steps=args.steps, group_size=cell.group_size, trajectories=args.trajectories, lr=cell.lr)
    seeds = list(range(args.seeds))
    start = time.perf_counter()
    runs, tapo_steps = train(REGIMES[cell.regime], ARMS[cell.arm], config, seeds, advantage_fn, on_step)
    record = {
        "cell": cell.name,
        "regime": cell.regime,
        "group_size": cell.group_size,
        "lr": cell.lr,
        "arm": cell.arm,
        "regime_config": REGIMES[cell.regime].to_json(),
        "train_config": asdict(config),
        "seeds": seeds,
        "seconds": round(time.perf_counter() - start, 2),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": runs,
        "tapo_steps": tapo_steps,
    }
    tmp = out_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, separators=(",", ":")))
    tmp.replace(out_file)  # atomic: a killed study never leaves a half-written cell


def _finished(out_file: Path, args) -> bool:
    """True when the cell is already in OUT with this study's size; a cell of another size is an error."""
    if not out_file.exists():
        return False
    record = json.loads(out_file.read_text())
    size = (record["train_config"]["steps"], record["train_config"]["trajectories"], len(record["seeds"]))
    if size != (args.steps, args.trajectories, args.seeds):
        raise SystemExit(
            f"{out_file} holds a run of another size (steps, trajectories, seeds) = {size}; use a new --out or "
            f"delete that folder to rerun at ({args.steps}, {args.trajectories}, {args.seeds})"
        )
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    out = Path(args.out)
    runs_dir = out / CELLS_DIR[args.grid]
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        from openrlhf_tapo.utils import cuda_stubs

        cuda_stubs.install()  # OpenRLHF's experience maker imports vllm; a real install is never replaced
        from openrlhf_tapo.adapter.stage.advantages import openrlhf_group_advantages

        torch.set_num_threads(1)  # the study is sized for one core
        if args.grid == "multicall":
            from openrlhf_tapo.sim.multicall_study import grid

            cells = grid(args.regimes, args.group_sizes, args.arms)
        else:
            from openrlhf_tapo.sim.mechanism_study import grid

            cells = grid(args.regimes, args.group_sizes, args.arms, sensitivity=not args.no_sensitivity)
        todo = [c for c in cells if not _finished(runs_dir / f"{c.name}.json", args)]
        print(f"{len(cells)} cells x {args.seeds} seeds x {args.steps} steps; {len(cells) - len(todo)} already done")
        with tqdm(total=len(todo) * args.steps, unit="step", file=sys.stdout, mininterval=2) as bar:
            for cell in todo:
                bar.set_postfix_str(cell.name)
                _run_cell(cell, args, runs_dir / f"{cell.name}.json", openrlhf_group_advantages, lambda: bar.update())

    if args.grid == "multicall":
        from openrlhf_tapo.sim import multicall_report as report
    else:
        from openrlhf_tapo.sim import mechanism_report as report
    cells = report.load_cells(runs_dir)
    if not cells:
        raise SystemExit(f"no finished cells in {runs_dir}")
    seconds = sum(c["seconds"] for c in cells.values())
    header = (
        f"# {report.TITLE}\n\n"
        f"{len(cells)} cells, {sum(len(c['runs']) for c in cells.values())} runs, {seconds / 60:.1f} min of training; "
        f"written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m openrlhf_tapo.cli.simulate "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`.\n"
    )
    figures = report.plot_all(cells, out)
    (out / "report.md").write_text(report.markdown(cells, header, figures))
    (out / "summary.json").write_text(json.dumps(report.summary(cells), indent=1))
    print(f"report: {out / 'report.md'}; figures: {', '.join(str(f) for f in figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
