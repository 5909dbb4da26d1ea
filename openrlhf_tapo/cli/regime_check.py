"""Is TAPO likely to matter on your data? A few GRPO steps on your prompts, the signals, a plain-words reading.

    python -m openrlhf_tapo.cli.regime_check --prompts ROWS --agent-config agent.yaml --pretrain MODEL \
        [--steps 8] [--prompts-per-step 8] [--n-samples 8] --out DIR

ROWS: any format `cli.evaluate` reads (MMSearch-R1 parquet, OpenRLHF prompt rows, mmsearch / infoseek / agent
jsonl) with labels holding the answer. MODEL: a local Hugging Face folder (nothing is downloaded). The steps run in
this process on CPU (OpenRLHF's own trainer classes, adapter/inprocess/loop.py), with the TAPO stage measuring at
beta 0. Writes OUT/regime.json and OUT/metrics.jsonl and prints the reading; thresholds and rules:
openrlhf_tapo/eval/regime.py, docs/evaluation.md ("Regime check").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openrlhf_tapo.eval.benchmarks import FORMATS
from openrlhf_tapo.runners.regime_run import RegimeCheckConfig


def parse_args(argv: list[str] | None = None) -> RegimeCheckConfig:
    d = RegimeCheckConfig("", "", "", "")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", required=True, help="prompt rows with labels (.parquet or .jsonl)")
    p.add_argument("--format", dest="fmt", choices=[f for f in FORMATS if f != "simplevqa"], help="default: detected")
    p.add_argument("--image-root", help="directory of the rows' relative image references")
    p.add_argument("--agent-config", required=True, help="agent YAML: tools and their backend, limits, reward")
    p.add_argument("--pretrain", required=True, help="local model folder (config.json, weights, processor)")
    p.add_argument("--out", required=True, help="output directory (regime.json, metrics.jsonl, regime_check.log)")
    p.add_argument("--steps", type=int, default=d.steps, help="GRPO steps (>= 3; the call-rate trend is over them)")
    p.add_argument("--prompts-per-step", type=int, default=d.prompts_per_step, help="prompts per step")
    p.add_argument("--n-samples", type=int, default=d.n_samples, help="rollouts per prompt (the GRPO group)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (RLConfig's default)")
    p.add_argument("--max-len", type=int, default=d.max_len, help="tokens of prompt + all turns")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the prompt order, rollouts and the model")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    return RegimeCheckConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from openrlhf_tapo.utils import cuda_stubs, library_output

    # torch's pynvml FutureWarning and the like go to OUT/regime_check.log; the console shows the bar and the reading
    library_output.quiet_imports(Path(config.out) / "regime_check.log", ("torch", "transformers"))
    cuda_stubs.install()  # OpenRLHF's RL modules import vllm; a real install is never replaced
    from openrlhf_tapo.runners.regime_run import RegimeCheckError, format_reading, run_regime_check

    try:
        command = " ".join(["python -m openrlhf_tapo.cli.regime_check", *(sys.argv[1:] if argv is None else argv)])
        result = run_regime_check(config, command=command)
    except RegimeCheckError as e:
        raise SystemExit(f"regime_check: {e}") from None
    print(format_reading(result))
    print(f"written: {config.out}/regime.json, {config.out}/metrics.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
