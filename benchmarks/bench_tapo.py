"""Cost of the TAPO stage against OpenRLHF 0.11.2's own advantage stage, on the same batch, in the same run.

Batch: P prompts x 8 trajectories, each with 1-10 tool-calling turns (text_search / image_search / zoom drawn
from a small per-prompt pool, so successful and failing trajectories share equivalent calls, as in real
rollouts) and an answer turn; binary rewards. Baseline: `RemoteExperienceMaker.compute_advantages_and_returns`
with `--algo.advantage.estimator group_norm` on real `Experience` objects of `--micro-batch` trajectories each
(16 by default: OpenRLHF's default `--rollout.micro_batch_size 1` makes its stage ~16x slower, since it loops over
the tokens once per micro batch, so 16 is the harder baseline). TAPO: `tapo_correct` with the default config on the
stacked advantages that stage produced, also with `scope="batch"` (fuzzy matching spans the whole batch) and,
with `scope="batch"`, on an adversarial batch of the same size where every query shares one long word
(`make_adversarial_batch`: quadratic before the inverted index dropped crowded blocks). All timed as the least CPU
time of several repetitions, one torch thread.

Reproduce:  .venv/bin/python benchmarks/bench_tapo.py                 (128 and 1024 prompts, micro batch 16)
            .venv/bin/python benchmarks/bench_tapo.py --quick         (16 and 128 prompts)
            .venv/bin/python benchmarks/bench_tapo.py --micro-batch 1 (OpenRLHF's default micro batch)
Floor: TAPO / baseline <= 1.0 at every size, and TAPO time growing linearly with the batch: x8 batch <= x9 time,
every scope and the adversarial batch included. benchmarks/run_all.py reads the table and the growth lines.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from types import SimpleNamespace

import torch

N_SAMPLES = 8
MAX_CALLS = 10
TURN_TOKENS = 48  # assistant tokens per tool-calling turn (reasoning + call)
CALL_TOKENS = 16  # tokens of the <tool_call> itself, at the end of the turn
OBS_TOKENS = 32  # tool response tokens (action_mask 0)
ANSWER_TOKENS = 16
COMMON_WORDS = ["what", "year", "who", "photo", "of", "in", "built", "name", "where", "when"]


def _openrlhf_maker(micro_batch: int):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from openrlhf_tapo.utils import cuda_stubs

    cuda_stubs.install()
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    from openrlhf_tapo.adapter.stage.openrlhf_args import parse_openrlhf_args

    args = parse_openrlhf_args(
        [
            "--actor.model_name_or_path", "dummy",
            "--algo.advantage.estimator", "group_norm",
            "--rollout.n_samples_per_prompt", str(N_SAMPLES),
            "--rollout.batch_size", "128",
            "--rollout.micro_batch_size", str(micro_batch),
            "--algo.kl.use_loss",
            "--algo.kl.estimator", "k3",
            "--actor.num_gpus_per_node", "1",
        ]
    )  # fmt: skip
    # Only strategy.args and kl_ctl.value are read by the advantage stage.
    return RemoteExperienceMaker(None, None, None, None, SimpleNamespace(value=0.0), SimpleNamespace(args=args), None)


def _random_params(rng: random.Random, prompt: int):
    tool = rng.choice(("text_search", "text_search", "image_search", "zoom"))
    if tool == "text_search":
        # Entity words of the prompt plus words every prompt's queries share, as real search queries do.
        words = [f"w{prompt}_{rng.randrange(6)}" for _ in range(rng.randint(1, 3))]
        words += rng.sample(COMMON_WORDS, rng.randint(1, 2))
        return tool, {"query": " ".join(words)}
    box = [rng.choice((0, 100, 200)), rng.choice((0, 100)), rng.choice((600, 800, 1000)), 1000]
    if tool == "image_search" and rng.random() < 0.5:
        return tool, {"image": "img_0"}
    return tool, {"image": f"img_{rng.randrange(2)}", "bbox": box}


def make_batch(prompts: int, seed: int = 0):
    """Rewards, action mask, group ids and tool calls of a synthetic agentic batch of prompts x 8 trajectories."""
    from openrlhf_tapo.algorithms.tapo import ToolCall

    rng = random.Random(seed)
    batch = prompts * N_SAMPLES
    turns = [rng.randint(1, MAX_CALLS) for _ in range(batch)]
    width = MAX_CALLS * (TURN_TOKENS + OBS_TOKENS) + ANSWER_TOKENS
    mask = torch.zeros(batch, width, dtype=torch.bool)
    rewards, calls = [], []
    for p in range(prompts):
        p_success = rng.random()
        for s in range(N_SAMPLES):
            i = p * N_SAMPLES + s
            rewards.append(1.0 if rng.random() < p_success else 0.0)
            pos = 0
            for turn in range(turns[i]):
                mask[i, pos : pos + TURN_TOKENS] = True
                tool, params = _random_params(rng, p)
                end = pos + TURN_TOKENS
                calls.append(ToolCall(i, tool, params, (end - CALL_TOKENS, end), (pos, end), turn, f"result {p}"))
                pos = end + OBS_TOKENS
            mask[i, pos : pos + ANSWER_TOKENS] = True
    group_ids = [i // N_SAMPLES for i in range(batch)]
    return torch.tensor(rewards), mask, group_ids, calls


def make_adversarial_batch(prompts: int, seed: int = 0):
    """The batch where scope="batch" fuzzy matching used to be quadratic: every trajectory makes MAX_CALLS text
    searches, every query holds the same long (so rare-looking, first in the prefix order) word plus prompt words
    and a word from a large shared pool, so nearly every reference group of the batch shares that one block."""
    from openrlhf_tapo.algorithms.tapo import ToolCall

    rng = random.Random(seed)
    batch = prompts * N_SAMPLES
    width = MAX_CALLS * (TURN_TOKENS + OBS_TOKENS) + ANSWER_TOKENS
    mask = torch.zeros(batch, width, dtype=torch.bool)
    rewards, calls = [], []
    for p in range(prompts):
        for s in range(N_SAMPLES):
            i = p * N_SAMPLES + s
            rewards.append(float(s % 2))
            pos = 0
            for turn in range(MAX_CALLS):
                mask[i, pos : pos + TURN_TOKENS] = True
                words = ["photographically", f"w{p}_{rng.randrange(4)}", f"v{rng.randrange(5000)}"]
                end = pos + TURN_TOKENS
                params = {"query": " ".join(words)}
                calls.append(ToolCall(i, "text_search", params, (end - CALL_TOKENS, end), (pos, end), turn, ""))
                pos = end + OBS_TOKENS
            mask[i, pos : pos + ANSWER_TOKENS] = True
    group_ids = [i // N_SAMPLES for i in range(batch)]
    return torch.tensor(rewards), mask, group_ids, calls


def _experiences(rewards: torch.Tensor, mask: torch.Tensor, micro: int):
    from openrlhf.trainer.ppo_utils.experience import Experience

    exps = []
    for start in range(0, len(rewards), micro):
        rows = slice(start, start + micro)
        m = mask[rows]
        exps.append(
            Experience(
                sequences=torch.ones(m.shape[0], m.shape[1] + 8, dtype=torch.long),
                action_mask=m,
                rewards=rewards[rows].clone(),
                kl=torch.zeros(m.shape, dtype=torch.float32),
                index=list(range(start, start + m.shape[0])),
                info={},
            )
        )
    return exps


def _best_cpu_time(prepare, reps: int) -> float:
    """Least CPU time (process_time) over `reps` runs of the callable `prepare()` returns: on a shared machine the
    wall clock mostly measures the neighbours, and the minimum is the least disturbed run (as timeit does)."""
    times = []
    for _ in range(reps):
        run = prepare()
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def run_size(maker, prompts: int, micro: int, reps: int) -> dict:
    from openrlhf_tapo.algorithms.tapo import TAPOConfig, tapo_correct

    rewards, mask, group_ids, calls = make_batch(prompts)

    def baseline():
        exps = _experiences(rewards, mask, micro)
        return lambda: maker.compute_advantages_and_returns(exps)

    baseline_s = _best_cpu_time(baseline, reps)
    exps = maker.compute_advantages_and_returns(_experiences(rewards, mask, micro))
    advantages = torch.cat([e.advantages for e in exps])
    success = (rewards >= 1.0).tolist()
    config = TAPOConfig()
    tapo_s = _best_cpu_time(lambda: lambda: tapo_correct(advantages, mask, group_ids, success, calls, config), reps)
    _, stats = tapo_correct(advantages, mask, group_ids, success, calls, config)
    batch_config = TAPOConfig(scope="batch")
    batch_s = _best_cpu_time(
        lambda: lambda: tapo_correct(advantages, mask, group_ids, success, calls, batch_config), reps
    )
    adv_rewards, adv_mask, adv_groups, adv_calls = make_adversarial_batch(prompts)
    adv_advantages = torch.where(adv_mask, (adv_rewards - 0.5)[:, None], torch.zeros(()))
    adv_success = (adv_rewards >= 1.0).tolist()
    adversarial_s = _best_cpu_time(
        lambda: lambda: tapo_correct(adv_advantages, adv_mask, adv_groups, adv_success, adv_calls, batch_config), reps
    )
    return {
        "prompts": prompts,
        "trajectories": len(rewards),
        "calls": len(calls),
        "baseline_ms": baseline_s * 1e3,
        "tapo_ms": tapo_s * 1e3,
        "ratio": tapo_s / baseline_s,
        "batch_scope_ms": batch_s * 1e3,
        "adversarial_ms": adversarial_s * 1e3,
        "correctable": stats["failing_calls_correctable_frac"],
        "corrected": stats["failing_calls_corrected_frac"],
    }


def bench_setup(doc: str, argv: list[str] | None):
    """The flags this benchmark and bench_estimators.py share, one torch thread, OpenRLHF's experience maker:
    (args, maker, the two batch sizes in prompts)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 and 128 prompts instead of 128 and 1024")
    parser.add_argument("--micro-batch", type=int, default=16, help="OpenRLHF --rollout.micro_batch_size")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement (least CPU time reported)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    return args, _openrlhf_maker(args.micro_batch), (16, 128) if args.quick else (128, 1024)


def main(argv: list[str] | None = None) -> None:
    args, maker, sizes = bench_setup(__doc__, argv)
    print(f"TAPO stage vs OpenRLHF compute_advantages_and_returns (group_norm), micro batch {args.micro_batch}")
    columns = ("prompts", "trajectories", "calls", "baseline_ms", "tapo_ms", "ratio", "correctable", "corrected")
    columns += ("batch_scope_ms", "adversarial_ms")
    # Two spaces between cells: benchmarks/run_all.py reads the table by its "ratio" column.
    print("  ".join(f"{c:>14}" for c in columns))
    rows = []
    for prompts in sizes:
        row = run_size(maker, prompts, args.micro_batch, args.reps)
        rows.append(row)
        print("  ".join(f"{row[c]:>14.3f}" if isinstance(row[c], float) else f"{row[c]:>14}" for c in columns))
    small, large = rows
    scale = large["trajectories"] / small["trajectories"]
    growth = {
        "openrlhf": large["baseline_ms"] / small["baseline_ms"],
        "tapo scope=group": large["tapo_ms"] / small["tapo_ms"],
        "tapo scope=batch": large["batch_scope_ms"] / small["batch_scope_ms"],
        "tapo scope=batch, adversarial queries": large["adversarial_ms"] / small["adversarial_ms"],
    }
    for name, value in growth.items():
        print(f"growth for a x{scale:.0f} batch, {name}: ratio {value:.2f} (linear = {scale:.0f})")
    ok = all(r["ratio"] <= 1.0 for r in rows)
    print(f"floor (tapo <= 1.0x openrlhf at every size): {'met' if ok else 'NOT met'}")
    linear = all(value <= 9 * scale / 8 for name, value in growth.items() if name != "openrlhf")
    print(f"growth target (tapo <= x{9 * scale / 8:.0f} for the x{scale:.0f} batch): {'met' if linear else 'NOT met'}")


if __name__ == "__main__":
    main()
