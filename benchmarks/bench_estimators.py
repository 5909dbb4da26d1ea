"""Cost of each advantage estimator of the registry against OpenRLHF 0.11.2's own advantage stage, same batch.

Batch: bench_tapo.py's synthetic agentic batch (P prompts x 8 trajectories, 1-10 tool-calling turns and an answer
turn, binary rewards), with every turn's anchor state built by `algorithms.gigpo.search_turns` and a first hit drawn
for 40 % of the trajectories. Baseline: `RemoteExperienceMaker.compute_advantages_and_returns` (group_norm) on real
`Experience` objects of `--micro-batch` trajectories. Each estimator runs through `apply_estimators` (the registry,
as the experience stage calls it, the anchor states built inside the timed part) on the stacked advantages that
stage produced: gigpo, turn_reward, tapo, and gigpo + tapo. Least CPU time of several repetitions, one torch thread.

Reproduce:  .venv/bin/python benchmarks/bench_estimators.py            (128 and 1024 prompts)
            .venv/bin/python benchmarks/bench_estimators.py --quick    (16 and 128 prompts)
Floor: each estimator's time grows at most x9 for the x8 batch (linear), as TAPO's.
"""

from __future__ import annotations

import random

import torch
from bench_tapo import N_SAMPLES, _best_cpu_time, _experiences, bench_setup, make_batch

ARMS = {"gigpo": ("gigpo",), "turn_reward": ("turn_reward",), "tapo": ("tapo",), "gigpo+tapo": ("gigpo", "tapo")}


def run_size(maker, prompts: int, micro: int, reps: int) -> dict:
    from openrlhf_tapo.adapter.stage.trajectory import rows_turn_spans
    from openrlhf_tapo.algorithms.estimators import ESTIMATORS, CreditInputs, apply_estimators
    from openrlhf_tapo.algorithms.gigpo import search_turns

    rewards, mask, group_ids, calls = make_batch(prompts)
    baseline_s = _best_cpu_time(
        lambda: lambda: maker.compute_advantages_and_returns(_experiences(rewards, mask, micro)), reps
    )
    exps = maker.compute_advantages_and_returns(_experiences(rewards, mask, micro))
    advantages = torch.cat([e.advantages for e in exps])
    spans = rows_turn_spans(mask)
    rng = random.Random(1)
    inputs = CreditInputs(
        group_ids=group_ids,
        rewards=rewards.tolist(),
        success=(rewards >= 1.0).tolist(),
        calls=calls,
        turns=search_turns(spans, calls),
        first_hit=[rng.randrange(len(s)) if rng.random() < 0.4 else None for s in spans],
    )
    row = {
        "prompts": prompts,
        "trajectories": len(rewards),
        "turns": len(inputs.turns),
        "baseline_ms": baseline_s * 1e3,
    }
    for arm, names in ARMS.items():
        configs = {name: ESTIMATORS[name].config() for name in names}
        seconds = _best_cpu_time(
            lambda configs=configs: lambda: apply_estimators(advantages, mask, inputs, configs), reps
        )
        row[f"{arm}_ms"] = seconds * 1e3
    _, stats = apply_estimators(advantages, mask, inputs, {"gigpo": ESTIMATORS["gigpo"].config()})
    row["singleton_share"] = stats["gigpo"]["singleton_share"]
    return row


def main(argv: list[str] | None = None) -> None:
    args, maker, sizes = bench_setup(__doc__, argv)
    print(f"estimators vs OpenRLHF compute_advantages_and_returns (group_norm), {N_SAMPLES} samples per prompt")
    rows = [run_size(maker, prompts, args.micro_batch, args.reps) for prompts in sizes]
    for row in rows:
        print(f"{row['prompts']} prompts, {row['trajectories']} trajectories, {row['turns']} turns: OpenRLHF "
              f"{row['baseline_ms']:.1f} ms CPU; GiGPO singleton share {row['singleton_share']:.2f}")  # fmt: skip
        for arm in ARMS:
            ratio = row[f"{arm}_ms"] / row["baseline_ms"]
            print(f"  {arm} at {row['prompts']} prompts: {row[f'{arm}_ms']:.1f} ms, {ratio:.2f}x openrlhf advantages")
    small, large = rows
    scale = large["trajectories"] / small["trajectories"]
    ok = True
    for arm in ("baseline", *ARMS):
        growth = large[f"{arm}_ms"] / small[f"{arm}_ms"]
        ok &= arm == "baseline" or growth <= 9 * scale / 8
        print(f"growth for a x{scale:.0f} batch, {arm}: ratio {growth:.2f} (linear = {scale:.0f})")
    verdict = "met" if ok else "NOT met"
    print(f"growth target (each estimator <= x{9 * scale / 8:.0f} for the x{scale:.0f} batch): {verdict}")


if __name__ == "__main__":
    main()
