"""Compare training runs side by side: `python -m openrlhf_tapo.cli.compare_runs RUN_DIR... --out DIR`.

Each RUN_DIR is what a run left behind: OpenRLHF's tensorboard directory (`--logger.tensorboard_dir`), a wandb
offline run, or our in-process loop's run directory (metrics jsonl). `NAME=DIR` sets the legend name. The key
names each plot looks for are listed in `openrlhf_tapo/eval/runs.py` (`METRICS`) and docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openrlhf_tapo.eval.compare import compare_runs
from openrlhf_tapo.eval.runs import load_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs", nargs="+", help="run directories (or NAME=DIR) holding tensorboard/wandb/jsonl metrics"
    )
    parser.add_argument("--out", required=True, help="output directory for the PNGs and summary.md")
    parser.add_argument("--smooth", type=int, default=1, help="trailing moving-average window for the plots")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smooth < 1:
        raise SystemExit("--smooth must be >= 1 (1 = no smoothing)")
    runs = []
    for spec in args.runs:
        name, _, directory = spec.rpartition("=") if "=" in spec else (None, "", spec)
        try:
            runs.append(load_run(directory, name=name or None))
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"compare_runs: {e}") from e
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise SystemExit(f"compare_runs: run names collide ({names}); name them with NAME=DIR")
    plots, summary = compare_runs(runs, Path(args.out), smoothing=args.smooth)
    print(f"wrote {len(plots)} plots ({', '.join(plots)}) and {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
