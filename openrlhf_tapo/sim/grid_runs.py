"""The simulation study's grid run: each cell (regime x group size x lr x arm) trains one tabular policy per seed and
is saved as one JSON, atomically, so a killed study continues where it stopped; then the report and figures are
written from every cell in OUT. `cli/simulate.py` parses the flags and passes OpenRLHF's group advantages in."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

GRIDS = ("mechanism", "multicall")  # part 1, part 2
CELLS_DIR = {"mechanism": "runs", "multicall": "cells"}


def design(grid: str):
    """(regimes, arms, group sizes, seeds) of a grid's design module."""
    if grid == "multicall":
        from openrlhf_tapo.sim import multicall_study as design

        return design.REGIMES, design.ARMS, (design.GROUP_SIZE,), design.SEEDS
    from openrlhf_tapo.sim import mechanism_study as design
    from openrlhf_tapo.sim.env import REGIMES

    return REGIMES, design.ARMS, design.GROUP_SIZES, design.SEEDS


def _run_cell(cell, args, out_file: Path, advantage_fn, on_step) -> None:
    from openrlhf_tapo.sim.train import TrainConfig, train

    REGIMES, ARMS, _, _ = design(args.grid)
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


def run_grid(args, advantage_fn) -> None:
    """Train the cells of `args` (cli/simulate.py's parsed flags) that OUT has not finished, on one core, under a
    progress bar; `advantage_fn(rewards, group_size)` gives the group advantages (the CLI passes OpenRLHF's)."""
    import torch
    from tqdm import tqdm

    runs_dir = Path(args.out) / CELLS_DIR[args.grid]
    runs_dir.mkdir(parents=True, exist_ok=True)
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
            _run_cell(cell, args, runs_dir / f"{cell.name}.json", advantage_fn, lambda: bar.update())


def write_grid_report(args, command: str) -> None:
    """OUT/report.md, OUT/summary.json and the figures, from every finished cell in OUT; `command` heads the report."""
    out = Path(args.out)
    runs_dir = out / CELLS_DIR[args.grid]
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
        f"written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}`.\n"
    )
    figures = report.plot_all(cells, out)
    (out / "report.md").write_text(report.markdown(cells, header, figures))
    (out / "summary.json").write_text(json.dumps(report.summary(cells), indent=1))
    print(f"report: {out / 'report.md'}; figures: {', '.join(str(f) for f in figures)}")
