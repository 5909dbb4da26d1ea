"""Forward + backward time of each policy loss against OpenRLHF 0.11.2's own PPO PolicyLoss, same tensors, one run.

    .venv/bin/python benchmarks/bench_losses.py            # 64 x 4096 tokens
    .venv/bin/python benchmarks/bench_losses.py --quick    # 16 x 1024 tokens

Every variant runs on the same inputs once per round, in a shuffled order, so machine load hits all of them alike.
A variant's ratio is the median over rounds of its time divided by the baseline's time in the same round (paired,
robust to load that comes and goes); the floor is <= 1.2x for every type.
"""

import argparse
import random
import statistics
import time

import torch

from openrlhf_tapo.utils import cuda_stubs

FLOOR = 1.2
BASELINE = "openrlhf ppo (baseline)"


def _inputs(batch: int, length: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=gen) * 3
    log_probs = old + torch.randn(batch, length, generator=gen) * 0.1
    rollout = old + torch.randn(batch, length, generator=gen) * 0.05
    advantages = torch.randn(batch, 1, generator=gen).expand(batch, length).contiguous()
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=gen)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return [t.to(device) for t in (log_probs, old, advantages, mask, rollout)]


def _step(loss_fn, inputs, device: str) -> float:
    log_probs, old, advantages, mask, rollout = inputs
    leaf = log_probs.detach().requires_grad_(True)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = loss_fn(leaf, old, advantages, action_mask=mask, rollout_log_probs=rollout)
    out[0].backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 x 1024 tokens, fewer rounds")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU intra-op threads (1: steady figures on a shared, loaded machine)"
    )
    parser.add_argument(
        "--is-correction", default="off", choices=["off", "token", "seq"], help="train/rollout IS correction level"
    )
    args = parser.parse_args(argv)
    batch = args.batch or (16 if args.quick else 64)
    length = args.length or (1024 if args.quick else 4096)
    rounds = args.rounds or (20 if args.quick else 100)

    torch.set_num_threads(args.threads)
    cuda_stubs.install()
    from openrlhf.models.loss import PolicyLoss as OpenRLHFPolicyLoss

    from openrlhf_tapo.adapter.stage.openrlhf_loss import PolicyLoss

    common = dict(is_correction_level=args.is_correction)
    gspo_clip = dict(clip_eps_low=3e-4, clip_eps_high=4e-4)
    variants = {
        BASELINE: OpenRLHFPolicyLoss(**common),
        "openrlhf gspo": OpenRLHFPolicyLoss(policy_loss_type="gspo", **gspo_clip, **common),
        "ppo": PolicyLoss(**common),
        "gspo": PolicyLoss(policy_loss_type="gspo", **gspo_clip, **common),
        "gspo_token": PolicyLoss(policy_loss_type="gspo_token", **gspo_clip, **common),
        "sapo": PolicyLoss(policy_loss_type="sapo", **common),
    }
    inputs = _inputs(batch, length, args.device)
    times = {name: [] for name in variants}
    for loss_fn in variants.values():  # warm-up
        _step(loss_fn, inputs, args.device)
    order = list(variants)
    shuffler = random.Random(0)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            times[name].append(_step(variants[name], inputs, args.device))

    print(
        f"policy loss forward+backward, {batch} x {length} tokens, float32, device={args.device}, "
        f"threads={torch.get_num_threads()}, is_correction={args.is_correction}, {rounds} rounds"
    )
    print(f"{'loss':<26}{'median ms':>11}{'min ms':>9}{'ratio':>8}")
    worst = 0.0
    for name, samples in times.items():
        ratio = statistics.median(t / base for t, base in zip(samples, times[BASELINE], strict=True))
        if not name.startswith("openrlhf"):
            worst = max(worst, ratio)
        print(f"{name:<26}{statistics.median(samples) * 1e3:>11.2f}{min(samples) * 1e3:>9.2f}{ratio:>7.2f}x")
    verdict = "within" if worst <= FLOOR else "ABOVE"
    print(f"worst ratio of our types: {worst:.2f}x ({verdict} the {FLOOR}x floor)")


if __name__ == "__main__":
    main()
