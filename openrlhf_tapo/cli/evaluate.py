"""Evaluate a checkpoint on a benchmark file with the training agent, tools and reward.

    python -m openrlhf_tapo.cli.evaluate --model DIR --data FILE [--format FMT] --agent-config agent.yaml --out DIR

FMT: mmsearch_r1 (MMSearch-R1/FVQA parquet), mmsearch, infoseek, simplevqa (LLM-judged), jsonl, prompts
(detected from the file when left out; see openrlhf_tapo/eval/benchmarks.py). Generation runs on vLLM when it is
really installed, else on transformers (CPU). Writes OUT/records.jsonl (one record per sample, streamed as samples
finish), OUT/summary.json and OUT/summary.md; what the libraries print on import goes to OUT/evaluate.log. See
docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from openrlhf_tapo.eval.benchmarks import FORMATS, BenchmarkFormatError, detect_format, read_benchmark
from openrlhf_tapo.eval.engines import BACKENDS
from openrlhf_tapo.eval.summary import summarize_records, summary_markdown

if TYPE_CHECKING:  # it imports torch, which prints on import: main imports it after `quiet_imports`
    from openrlhf_tapo.eval.evaluator import EvalConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model directory (a checkpoint)")
    p.add_argument("--data", required=True, help="benchmark file (.parquet or .jsonl)")
    p.add_argument("--format", choices=FORMATS, help="benchmark format (default: detected)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--agent-config", help="agent YAML (tools, backend, limits, reward); default $OPENRLHF_TAPO_AGENT_CONFIG"
    )
    p.add_argument("--image-root", help="directory holding the benchmark's images (InfoSeek image_id, relative paths)")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: vLLM when installed, else transformers")
    p.add_argument("--dtype", default="bfloat16", help="vLLM dtype (transformers on CPU always uses float32)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallelism")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM GPU memory fraction")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=4096, help="tokens for prompt + all turns")
    p.add_argument("--concurrency", type=int, default=8, help="trajectories in flight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge-url", help="OpenAI-compatible base URL of the LLM judge (overrides the agent config)")
    p.add_argument("--judge-model", help="judge model name")
    p.add_argument("--judge-api-key-env", help="environment variable holding the judge's API key")
    p.add_argument(
        "--allow-no-judge", action="store_true", help="score a judged benchmark (simplevqa) by the rules if no judge"
    )
    return p.parse_args(argv)


def _agent_config(args):
    from openrlhf_tapo.agent.config import load_agent_config

    config = load_agent_config(args.agent_config)
    judge = config.reward.judge
    if args.judge_url:
        judge.url = args.judge_url
    if args.judge_model:
        judge.model = args.judge_model
    if args.judge_api_key_env:
        judge.api_key_env = args.judge_api_key_env
    config.validate()
    return config


async def _run(args, samples, config, eval_config: EvalConfig, out: Path) -> list:
    from tqdm import tqdm

    from openrlhf_tapo.agent.executor import AgentExecutor
    from openrlhf_tapo.eval.engines import load_engine
    from openrlhf_tapo.eval.evaluator import evaluate

    kwargs = {}
    if args.backend != "hf":
        kwargs = dict(
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_length,
        )
    dtype = args.dtype if args.backend != "hf" else "float32"
    max_images = config.tools.max_images_per_trajectory
    engine, processor, backend = load_engine(args.model, args.backend, dtype=dtype, max_images=max_images, **kwargs)
    print(f"engine: {backend}; {len(samples)} samples; agent max_turns={config.max_turns}", file=sys.stderr)
    executor = AgentExecutor(config)
    bar = tqdm(total=len(samples), desc="evaluate", unit="sample", file=sys.stderr)
    correct = 0.0
    with open(out / "records.jsonl", "w", encoding="utf-8") as f:

        def on_record(i, record):
            nonlocal correct
            f.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            f.flush()
            correct += record.scores.get("score", 0.0)
            bar.update(1)
            bar.set_postfix(acc=f"{correct / bar.n:.3f}")

        try:
            records = await evaluate(samples, executor, engine, processor, eval_config, on_record)
        finally:
            bar.close()
            await executor.runner.close()
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from openrlhf_tapo.utils import cuda_stubs, library_output

    out = Path(args.out)
    # torch's pynvml FutureWarning and the like go to OUT/evaluate.log; the console shows our lines and the bar
    library_output.quiet_imports(out / "evaluate.log", ("torch", "transformers"))
    cuda_stubs.install()  # OpenRLHF's agent modules import vllm; a real install is never replaced
    from openrlhf_tapo.eval.evaluator import EvalConfig

    try:
        fmt = args.format or detect_format(args.data)
        samples = read_benchmark(args.data, fmt, args.image_root)
        config = _agent_config(args)
        eval_config = EvalConfig(args.temperature, args.top_p, args.max_length, args.concurrency, args.seed)
        eval_config.validate()
    except (FileNotFoundError, BenchmarkFormatError, ValueError) as e:
        raise SystemExit(f"evaluate: {e}") from e
    if args.limit is not None:
        samples = samples[: max(0, args.limit)]
    if any(s.judge for s in samples):
        if config.reward.judge.enabled:
            config.reward.judge.mode = "always"  # SimpleVQA's protocol: the judge decides every answer
        elif not args.allow_no_judge:
            raise SystemExit(
                f"evaluate: --format {fmt} is scored by an LLM judge: pass --judge-url URL --judge-model NAME (or set "
                "reward.judge in the agent config), or --allow-no-judge to score by exact match instead"
            )
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = asyncio.run(_run(args, samples, config, eval_config, out))
    summary = summarize_records(records)
    summary.update(
        model=str(args.model),
        data=str(args.data),
        format=fmt,
        judge=config.reward.judge.model if config.reward.judge.enabled else None,
        temperature=args.temperature,
        elapsed_s=round(time.perf_counter() - t0, 1),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    markdown = summary_markdown(summary, title=f"{Path(args.data).name} ({fmt}) - {Path(args.model).name}")
    (out / "summary.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"records: {out / 'records.jsonl'}; summary: {out / 'summary.json'}, {out / 'summary.md'}", file=sys.stderr)
    failed = [r for r in records if r.error]
    if failed:
        print(f"{len(failed)} sample(s) failed; first: {failed[0].id}: {failed[0].error}", file=sys.stderr)
        if len(failed) == len(records):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
