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
import sys

from openrlhf_tapo.sim.grid_runs import GRIDS, design, run_grid, write_grid_report


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
    REGIMES, ARMS, group_sizes, seeds = design(args.grid)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.report_only:
        from openrlhf_tapo.utils import cuda_stubs

        cuda_stubs.install()  # OpenRLHF's experience maker imports vllm; a real install is never replaced
        from openrlhf_tapo.adapter.stage.advantages import openrlhf_group_advantages

        run_grid(args, openrlhf_group_advantages)
    command = "python -m openrlhf_tapo.cli.simulate " + " ".join(argv if argv is not None else sys.argv[1:])
    write_grid_report(args, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
