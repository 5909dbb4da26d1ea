"""Cost of the TAPO experience stage against OpenRLHF 0.11.2's own advantage computation, same batch, one run.

    .venv/bin/python benchmarks/bench_experience_stage.py            # 128 prompts x 8 rollouts
    .venv/bin/python benchmarks/bench_experience_stage.py --quick    # 16 prompts x 8 rollouts

Each trajectory: the agent's prompt, 4 assistant turns with a text_search call (queries drawn from a small pool so
that equivalent calls recur across trajectories), each followed by a tool response, then an answer; ~2,000 tokens
with the tiny byte-level tokenizer of the tests (more tokens per character than a real one). Success rate 40 %.
Real OpenRLHF Experiences, split into micro-batches by OpenRLHF. Printed: OpenRLHF's `compute_advantages_and_returns`
(group_norm), our stage's two parts (tool-call recovery from the tokens, `tapo_correct`), and the ratios, all as
CPU time of this process with one torch thread (the machine is shared: wall time measures the neighbours).
Target: the whole stage <= 0.25x OpenRLHF's advantage stage at 128 x 8 trajectories.
"""

import argparse
import copy
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from openrlhf_tapo.utils import cuda_stubs

cuda_stubs.install()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' rollout builder
from _tapo_rollouts import call, experiences, response, tokenizer  # noqa: E402

from openrlhf_tapo.adapter.stage.credit_args import estimator_namespace  # noqa: E402
from openrlhf_tapo.adapter.stage.experience_stage import TAPOExperienceMaker, apply_credit, success_flags  # noqa: E402
from openrlhf_tapo.adapter.stage.openrlhf_args import parse_openrlhf_args  # noqa: E402
from openrlhf_tapo.algorithms import estimators as estimators_module  # noqa: E402
from openrlhf_tapo.algorithms.tapo import TAPOConfig  # noqa: E402

N_SAMPLES = 8
CALL_TURNS = 4
OBSERVATION = "1. The Eiffel Tower - Wikipedia\nThe Eiffel Tower is 330 m tall and stands in Paris. " * 4


def _batch(prompts: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    responses = []
    for p in range(prompts):
        pool = [f"eiffel tower height {p}", f"paris landmark {p}", f"tower architect {p}", f"query {p} alt"]
        for _ in range(N_SAMPLES):
            turns = [
                (
                    "Let me think step by step about the image. " * 3 + call("text_search", f'{{"query": "{q}"}}'),
                    OBSERVATION,
                )
                for q in rng.choices(pool, k=CALL_TURNS)
            ]
            turns.append(("<answer>330 m</answer>", None))
            responses.append(response(turns, float(rng.random() < 0.4)))
    return responses


def _timed(fn, *args):
    """(result, CPU seconds of this process): on a shared machine the wall clock mostly measures the neighbours."""
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 prompts instead of 128")
    parser.add_argument("--micro-batch", type=int, default=8, help="--rollout.micro_batch_size")
    args = parser.parse_args(argv)
    prompts = 16 if args.quick else 128
    torch.set_num_threads(1)  # CPU time of one thread for both stages, as benchmarks/bench_tapo.py

    ppo_args = parse_openrlhf_args(
        ["--actor.model_name_or_path", "bench", "--algo.advantage.estimator", "group_norm",
         "--rollout.n_samples_per_prompt", str(N_SAMPLES), "--rollout.batch_size", str(prompts),
         "--rollout.micro_batch_size", str(args.micro_batch), "--algo.kl.use_loss", "--algo.kl.estimator", "k3",
         "--actor.num_gpus_per_node", "1", "--train.agent_func_path", "openrlhf_tapo/agent/executor.py"]
    )  # fmt: skip
    ppo_args.tapo = estimator_namespace(True, TAPOConfig())
    strategy = SimpleNamespace(args=ppo_args)
    maker = TAPOExperienceMaker(None, None, None, None, SimpleNamespace(value=0.0), strategy, tokenizer())

    print(f"building {prompts} x {N_SAMPLES} trajectories ...", flush=True)
    batches = experiences(maker, _batch(prompts))
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    print(f"{prompts * N_SAMPLES} trajectories, {tokens / (prompts * N_SAMPLES):.0f} tokens each on average")

    success = success_flags(batches, TAPOConfig().success_threshold)
    rewards = [r for b in batches for r in b.rewards.tolist()]
    base, t_openrlhf = _timed(super(TAPOExperienceMaker, maker).compute_advantages_and_returns, batches)

    recovery_time = []
    recover = maker.tool_call_recovery.recover

    def timed_recover(*a, **kw):
        out, seconds = _timed(lambda: recover(*a, **kw))
        recovery_time.append(seconds)
        return out

    maker.tool_call_recovery.recover = timed_recover
    correct_time = []
    tapo_correct = estimators_module.tapo_correct

    def timed_correct(*a):
        out, seconds = _timed(tapo_correct, *a)
        correct_time.append(seconds)
        return out

    estimators_module.tapo_correct = timed_correct
    try:
        all_stats, t_stage = _timed(apply_credit, copy.deepcopy(base), success, rewards, N_SAMPLES,
                                    maker.tool_call_recovery, maker.credit_configs)  # fmt: skip
    finally:
        estimators_module.tapo_correct = tapo_correct
    stats = all_stats["tapo"]
    t_recovery, t_correct = sum(recovery_time), sum(correct_time)
    print(f"calls {stats['num_calls']:.0f}, corrected {stats['corrected_calls']:.0f}, "
          f"failing trajectories correctable {100 * stats['failing_traj_correctable_frac']:.0f} %")  # fmt: skip
    print(f"OpenRLHF compute_advantages_and_returns (group_norm): {t_openrlhf:.3f} s CPU")
    print(f"TAPO stage: {t_stage:.3f} s CPU = recovery {t_recovery:.3f} s + tapo_correct {t_correct:.3f} s + rest")
    print(f"tapo stage / openrlhf advantages: {t_stage / t_openrlhf:.2f}x")
    print(f"tool-call recovery / openrlhf advantages: {t_recovery / t_openrlhf:.2f}x")


if __name__ == "__main__":
    main()
