"""The regime check: a few GRPO steps on a user's own prompts, the signals that predict TAPO's gain, and their reading.

`run_regime_check` checks the inputs (prompt file with labels, agent YAML whose tools can be built, a local model
folder), then runs `steps` GRPO steps in this process with the in-process driver (adapter/inprocess/loop.py:
OpenRLHF's experience maker, PPO trainer and loss) and the TAPO stage at beta 0, which measures the correctable rate
and changes no advantage. Per step it records the tool-call rate, accuracy, the first-error kinds of the failing
trajectories (agent/failures.py), TAPO's failing trajectories and their correctable share, and the share of GRPO
groups whose rewards differ. eval/regime.py turns them into signals and reads them. Writes:

- OUT/regime.json: inputs, settings, per-step records, signals, the reading and its thresholds;
- OUT/metrics.jsonl: every step's full metrics (what `compare_runs` reads);
- OUT/regime_check.log: what the libraries print.

No checkpoint is written: the run measures the regime, it is not a training run.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# torch (through agent.failures and the adapter) is imported inside the functions: the CLI imports it after sending
# what it prints on import to OUT/regime_check.log


class RegimeCheckError(ValueError):
    """An input the check cannot run on; the message names the flag and the fix."""


@dataclass
class RegimeCheckConfig:
    """The run. prompts: the rows (any `cli.evaluate` format except LLM-judged ones); fmt: their format (None:
    detected); image_root: where relative image references are found; agent_config: the agent YAML (tools, backend,
    limits, reward); pretrain: a local Hugging Face model folder. The RL settings are `RLConfig`'s fields."""

    prompts: str
    agent_config: str
    pretrain: str
    out: str
    steps: int = 8
    prompts_per_step: int = 8
    n_samples: int = 8
    lr: float = 5e-4
    max_len: int = 1536
    seed: int = 0
    fmt: str | None = None
    image_root: str | None = None
    threads: int = 1


def read_rows(config: RegimeCheckConfig) -> list[dict]:
    """The prompt rows the rollout takes ({"prompt", "label", "images"}), read by the benchmark readers."""
    from openrlhf_tapo.eval.benchmarks import BenchmarkFormatError, read_benchmark

    try:
        samples = read_benchmark(config.prompts, config.fmt, config.image_root)
    except FileNotFoundError as e:
        raise RegimeCheckError(f"--prompts {config.prompts}: the file does not exist") from e
    except BenchmarkFormatError as e:  # a sample without a gold answer lands here too
        raise RegimeCheckError(f"--prompts: {e}. Every row needs a label with its answer (docs/evaluation.md)") from e
    judged = [s.id for s in samples if s.judge]
    if judged:
        raise RegimeCheckError(
            f"--prompts {config.prompts}: {len(judged)} rows are scored by an LLM judge (simplevqa); the check needs "
            "rows whose labels score the answer by rule (failure kinds read the answer from the label)"
        )
    return [{"prompt": s.question, "label": s.label, "images": list(s.images) or None} for s in samples]


def check_inputs(config: RegimeCheckConfig):
    """The agent configuration, once its tools build; raises RegimeCheckError naming the flag otherwise."""
    from openrlhf_tapo.adapter.checks.preflight import check_model
    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.tools.registry import build_tool_runner

    if config.steps < 3 or min(config.prompts_per_step, config.n_samples) < 2:
        raise RegimeCheckError(
            "--steps must be >= 3 (a trend's interval needs 3 points), --prompts-per-step and --n-samples >= 2 (a "
            f"GRPO group needs 2 rollouts); got {config.steps}, {config.prompts_per_step}, {config.n_samples}"
        )
    if not Path(config.pretrain).is_dir():
        raise RegimeCheckError(f"--pretrain {config.pretrain}: not a local model folder (no download is attempted)")
    problems = check_model("--pretrain", config.pretrain)
    if problems:
        raise RegimeCheckError(problems[0])
    if not Path(config.agent_config).is_file():
        raise RegimeCheckError(f"--agent-config {config.agent_config}: the file does not exist")
    try:
        agent = load_agent_config(config.agent_config)
        runner = build_tool_runner(agent.tools)
    except (OSError, ValueError, ImportError, AttributeError) as e:
        raise RegimeCheckError(
            f"--agent-config {config.agent_config}: its tools cannot be built: {e}. Set tools.backend (e.g. `local` "
            "with index_dir, built by python -m openrlhf_tapo.cli.build_index; docs/tools.md)"
        ) from e
    tools = [schema["function"]["name"] for schema in runner.schemas()]
    asyncio.run(runner.close())
    if not tools:
        raise RegimeCheckError(
            f"--agent-config {config.agent_config}: no tool is enabled (tools.enabled); the check measures tool use"
        )
    return agent


def mixed_group_share(last_advantages, group_size: int) -> float:
    """Share of the step's GRPO groups with a nonzero advantage on some action token (their rewards differ), from
    `InProcessRL.last_advantages` ((rollout indices, advantages, action mask) per micro-batch)."""
    mixed: dict[int, bool] = {}
    for indices, advantages, mask in last_advantages:
        nonzero = ((advantages * mask).abs() > 1e-8).any(dim=-1).tolist()
        for index, flag in zip(indices, nonzero, strict=True):
            group = index // group_size
            mixed[group] = mixed.get(group, False) or flag
    return sum(mixed.values()) / len(mixed) if mixed else 0.0


def step_record(step: int, status: dict, mixed: float) -> dict:
    """The numbers of one step the signals are made of (eval/regime.py's `signals`)."""
    from openrlhf_tapo.agent.failures import FAILURE_KINDS

    return {
        "step": step,
        "tool_call_rate": status["tool_call_rate"],
        "accuracy": status["accuracy"],
        "failing": status.get("tapo/failing_trajectories", 0.0),
        "correctable": status.get("tapo/failing_traj_correctable_frac", 0.0),
        "mixed_groups": mixed,
        **{f"failure/{kind}": status.get(f"agent/failure/{kind}", 0.0) for kind in FAILURE_KINDS},
    }


def run_regime_check(config: RegimeCheckConfig, command: str = "") -> dict:
    """Run the check (module doc); returns what OUT/regime.json holds."""
    from openrlhf_tapo.eval.regime import THRESHOLDS, read_regime, signals
    from openrlhf_tapo.utils.library_output import quiet_output

    out = Path(config.out)
    rows = read_rows(config)
    agent = check_inputs(config)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_output(out / "regime_check.log") as console:
        steps = _run_steps(config, rows, agent, out, console)
    found = signals(steps)
    reading = read_regime(found)
    backend = agent.tools.backend
    result = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "inputs": {
            "prompts": config.prompts,
            "rows": len(rows),
            "agent_config": config.agent_config,
            "tools": list(agent.tools.enabled),
            "backend": {"kind": backend.kind, **({"index_dir": backend.index_dir} if backend.kind == "local" else {})},
            "pretrain": config.pretrain,
        },
        "settings": {**asdict(config), "tapo_beta": 0.0, "algorithm": "GRPO (group_norm), TAPO stage measuring only"},
        "steps": steps,
        "signals": found.to_json(),
        "reading": {"verdict": reading.verdict, "lines": reading.lines},
        "thresholds": THRESHOLDS,
    }
    (out / "regime.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _run_steps(config: RegimeCheckConfig, rows: list[dict], agent, out: Path, console) -> list[dict]:
    """`config.steps` GRPO steps from `config.pretrain`, prompts drawn without replacement (reshuffled when used up),
    under a progress bar on `console`; returns the step records."""
    import torch
    from openrlhf.utils import get_tokenizer
    from tqdm import tqdm

    from openrlhf_tapo.adapter.inprocess.loop import InProcessRL, prompt_batches
    from openrlhf_tapo.adapter.inprocess.trainer import load_actor
    from openrlhf_tapo.adapter.run_spec import RLConfig
    from openrlhf_tapo.algorithms.tapo import TAPOConfig

    torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    rl_config = RLConfig(
        steps=config.steps,
        prompts_per_step=config.prompts_per_step,
        n_samples_per_prompt=config.n_samples,
        micro_batch_size=config.n_samples,
        lr=config.lr,
        max_len=config.max_len,
        tapo_enable=True,
        tapo=TAPOConfig(beta=0.0),  # the stage measures the correctable rate and changes no advantage
        seed=config.seed,
    )
    processor = get_tokenizer(config.pretrain, None, "left")
    rl = InProcessRL(load_actor(config.pretrain), processor, agent, rl_config, Path(config.pretrain), out)
    batches, records = prompt_batches(rows, config.prompts_per_step, config.seed), []
    bar = tqdm(total=config.steps, desc="GRPO steps", unit="step", file=console, dynamic_ncols=True)
    with bar, (out / "metrics.jsonl").open("w") as metrics:
        for step in range(1, config.steps + 1):
            status = rl.step(next(batches))
            metrics.write(json.dumps({"step": step, **status}) + "\n")
            records.append(step_record(step, status, mixed_group_share(rl.last_advantages, config.n_samples)))
            bar.set_postfix_str(f"acc {status['accuracy']:.2f}, call rate {status['tool_call_rate']:.2f}")
            bar.update(1)
    return records


def format_reading(result: dict) -> str:
    """The console report: the verdict, its lines, the failure shares, where the files are."""
    s = result["signals"]
    shares = ", ".join(f"{kind} {share:.2f}" for kind, share in s["failure_shares"].items())
    lines = [
        f"Regime check: {result['inputs']['rows']} rows of {result['inputs']['prompts']}, model "
        f"{result['inputs']['pretrain']}, {result['settings']['steps']} GRPO steps x "
        f"{result['settings']['prompts_per_step']} prompts x {result['settings']['n_samples']} rollouts",
        f"tools {', '.join(result['inputs']['tools'])} on backend {result['inputs']['backend']}",
        f"TAPO likely to matter? {result['reading']['verdict'].upper().replace('_', ' ')}",
        *(f"  - {line}" for line in result["reading"]["lines"]),
        f"  failures by first error: {shares}",
    ]
    return "\n".join(lines)
