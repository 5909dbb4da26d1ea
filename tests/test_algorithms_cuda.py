"""The pure algorithms compute on a CUDA device what they compute on the CPU: policy losses and TAPO.

Every other test runs on the CPU, but training runs on GPUs: the losses get CUDA (often bf16) tensors from the actor,
and TAPO gets CUDA advantages and action masks from the experience maker. A tensor built on the CPU inside an
algorithm (a `torch.tensor(...)` without `device=`), an output left on the wrong device, or a kernel that computes
differently would only show there. Each test runs the same seeded inputs on the CPU and on the target device and
compares loss, gradient, metrics, corrected advantages and statistics.

Target device: `cuda` (the current CUDA device), or the device named by the environment variable
`OPENRLHF_TAPO_TEST_DEVICE`, e.g. `cuda:1`, or `cpu` to exercise the comparison itself on a machine without a GPU.
When the target is CUDA and torch sees no CUDA device, the module is skipped. Only torch, pytest,
`openrlhf_tapo.algorithms` and test_tapo's batch helpers are imported, so the module runs on a GPU machine without
OpenRLHF, DeepSpeed or Ray; `scripts/check_gpu_algorithms.sh` runs it there.
"""

import math
import os

import pytest
import torch
from test_tapo import EIFFEL, WIDTH, ZOOM, _call

from openrlhf_tapo.algorithms.policy_loss import (
    POLICY_LOSSES,
    SAPO_GATE_CLOSED_WEIGHT,
    PolicyLossConfig,
    get_policy_loss,
)
from openrlhf_tapo.algorithms.tapo import TAPOConfig, correctable_rate, tapo_correct

DEVICE = torch.device(os.environ.get("OPENRLHF_TAPO_TEST_DEVICE", "cuda"))

pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA device (torch.cuda.is_available() is False); "
    "set OPENRLHF_TAPO_TEST_DEVICE=cpu to run the comparison on the CPU",
)


def _assert_on_target(*tensors: torch.Tensor) -> None:
    # A bare "cuda" resolves to the current device index, as the algorithms' outputs do.
    target = torch.empty(0, device=DEVICE).device
    for tensor in tensors:
        assert tensor.device == target, f"a result lives on {tensor.device}, not on {target}"


# --- policy losses -------------------------------------------------------------------------------------------------

BATCH, LENGTH = 8, 64
LOSS_CONFIGS = {
    "default": PolicyLossConfig(),
    "asymmetric_dual_clip": PolicyLossConfig(clip_eps_high=0.28, dual_clip=3.0, sapo_tau_pos=0.5, sapo_tau_neg=2.0),
}
# Rounding differences between devices are a few ulp (~1e-6 on a log-ratio); a ratio this far from every edge where
# a loss changes branch takes the same branch on both devices, so a mismatch is a real difference.
EDGE_MARGIN = 1e-5


def _loss_inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(log_probs, old_log_probs, advantages, mask) on the CPU, float32, [BATCH, LENGTH]."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(BATCH, LENGTH, generator=gen) * 4
    # Small token noise around a per-sequence drift from -0.4 to 0.4 puts some whole sequences (gspo) outside the clip
    # band; one token in ten moves far, past the dual-clip floor (r > 3) and far enough to close sapo's gate.
    drift = torch.linspace(-0.4, 0.4, BATCH)[:, None]
    log_ratio = drift + torch.randn(BATCH, LENGTH, generator=gen) * 0.1
    far = torch.rand(BATCH, LENGTH, generator=gen) < 0.1
    log_ratio = torch.where(far, torch.randn(BATCH, LENGTH, generator=gen) * 1.5, log_ratio)
    # Per-token advantages of both signs around a per-sequence value: TAPO makes them vary within a sequence.
    advantages = torch.randn(BATCH, 1, generator=gen) + torch.randn(BATCH, LENGTH, generator=gen) * 0.3
    lengths = torch.randint(LENGTH // 4, LENGTH + 1, (BATCH,), generator=gen)
    lengths[-1] = 0  # an empty response: the sequence means must not divide by zero on either device
    mask = torch.arange(LENGTH) < lengths[:, None]
    return old + log_ratio, old, advantages, mask


def _branch_edges(config: PolicyLossConfig) -> list[float]:
    """Log-ratios where a loss switches branch: the clip band, the dual-clip floor, sapo's gated-token count."""
    edges = [math.log(1 - config.clip_eps_low), math.log(1 + config.clip_eps_high)]
    if config.dual_clip is not None:
        edges.append(math.log(config.dual_clip))
    # sapo counts a token as gated when 4 g (1 - g) < SAPO_GATE_CLOSED_WEIGHT, g = sigmoid(tau (r - 1)).
    gate = (1 + math.sqrt(1 - SAPO_GATE_CLOSED_WEIGHT)) / 2
    edges += [math.log(1 + math.log(gate / (1 - gate)) / tau) for tau in (config.sapo_tau_pos, config.sapo_tau_neg)]
    return edges


def _assert_away_from_edges(inputs, config: PolicyLossConfig) -> None:
    log_probs, old, _, mask = inputs
    token = (log_probs - old).double()
    sequence = (token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    for edge in _branch_edges(config):
        assert (token - edge).abs().min() > EDGE_MARGIN and (sequence - edge).abs().min() > EDGE_MARGIN, (
            f"the seeded inputs put a ratio within {EDGE_MARGIN} of the branch edge log r = {edge:.4f}; change seed"
        )


def _loss_and_grad(loss_fn, inputs, config: PolicyLossConfig):
    """(per-token loss, token-mean loss, d token-mean / d log_probs, metrics), as OpenRLHF's token-mean trains."""
    log_probs, old, advantages, mask = inputs
    leaf = log_probs.detach().requires_grad_(True)
    loss, metrics = loss_fn(leaf, old, advantages, mask, config)
    token_mean = (loss * mask).sum() / mask.sum()
    token_mean.backward()
    return loss.detach(), token_mean.detach(), leaf.grad, metrics


@pytest.mark.parametrize("config", LOSS_CONFIGS.values(), ids=LOSS_CONFIGS.keys())
@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_policy_loss_on_target_device_matches_cpu(name, config):
    loss_fn = get_policy_loss(name)
    cpu_inputs = _loss_inputs()
    _assert_away_from_edges(cpu_inputs, config)
    expected_loss, expected_mean, expected_grad, expected_metrics = _loss_and_grad(loss_fn, cpu_inputs, config)
    loss, token_mean, grad, metrics = _loss_and_grad(loss_fn, [t.to(DEVICE) for t in cpu_inputs], config)

    _assert_on_target(loss, grad, *metrics.values())
    # Both branches of every loss are taken, so a device that clipped differently would change the numbers.
    assert 0 < expected_metrics["clip_fraction"] < 1
    torch.testing.assert_close(loss.cpu(), expected_loss)
    torch.testing.assert_close(token_mean.cpu(), expected_mean)
    torch.testing.assert_close(grad.cpu(), expected_grad)
    assert metrics.keys() == expected_metrics.keys()
    for key, value in metrics.items():
        torch.testing.assert_close(value.cpu(), expected_metrics[key], msg=lambda m, key=key: f"metric {key}: {m}")


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_policy_loss_in_bf16_on_target_device_stays_near_float32(name):
    loss_fn, config = get_policy_loss(name), PolicyLossConfig()
    inputs = [t.to(DEVICE) for t in _loss_inputs()]
    reference, reference_mean, _, _ = _loss_and_grad(loss_fn, inputs, config)
    mask = inputs[3]
    low = [t.bfloat16() if t.is_floating_point() else t for t in inputs]
    loss, token_mean, grad, metrics = _loss_and_grad(loss_fn, low, config)

    _assert_on_target(loss, grad, *metrics.values())
    assert loss.dtype == grad.dtype == torch.bfloat16
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert all(torch.isfinite(value) for value in metrics.values())
    # bf16 rounds each log-prob (magnitude up to 4) by up to 2^-7, which moves a ratio by up to ~1.6%. The loss is
    # continuous in the ratio (a clip edge only cuts the gradient), and those errors mostly cancel in the token mean:
    # it moved by at most 0.4% of the mean per-token |loss| over seeds 0-4 on the CPU. The token mean itself can be
    # near 0, so the tolerance scales with the per-token losses instead.
    scale = reference[mask].abs().mean()
    torch.testing.assert_close(token_mean.float(), reference_mean, rtol=0, atol=2e-2 * scale.item())


# --- TAPO ----------------------------------------------------------------------------------------------------------


def _tapo_batch():
    """(advantages, action_mask, group_ids, success, calls) on the CPU: two groups of four, WIDTH columns.

    Advantages are multiples of 1/64 below 4 in magnitude: every sum over a row is exact in float32 (and every value
    exact in bf16), so the trajectory advantages, hence the credits and statistics, cannot depend on a device's
    reduction order, and the devices must agree bit for bit.
    """
    gen = torch.Generator().manual_seed(0)
    base = torch.tensor([1.0, 0.5, -1.0, -2.0, 1.5, 0.5, -0.75, -1.25])
    advantages = base[:, None] + torch.randint(-8, 9, (8, WIDTH), generator=gen) / 64
    advantages[3, 5] = 0.25  # a non-negative token inside a corrected span keeps its value
    mask = torch.ones(8, WIDTH, dtype=torch.bool)
    mask[2, 1] = False  # a masked token inside a corrected span keeps its value
    mask[6, 6:] = False  # a shorter response
    groups = [7, 7, 7, 7, 3, 3, 3, 3]
    success = [True, True, False, False, True, True, False, False]
    calls = [
        # Group 7: row 2's search is an exact match, row 3's a fuzzy miss and its zoom a fuzzy hit (IoU 0.8).
        _call(0, "text_search", EIFFEL),
        _call(1, "text_search", {"query": "eiffel tower, height"}),
        _call(1, "zoom", ZOOM, turn=1),
        _call(2, "text_search", {"query": "The Eiffel Tower height!"}),
        _call(3, "text_search", {"query": "eiffel tower"}),
        _call(3, "zoom", {"image": "img_0", "bbox": [0, 0, 500, 400]}, turn=1),
        # Group 3: a fuzzy image crop (IoU 0.9) and an unknown tool matched on canonical JSON; row 7's search has a
        # witness only in group 7 (corrected under scope="batch").
        _call(4, "image_search", {"image": "img_1", "bbox": [0, 0, 500, 500]}),
        _call(5, "calculator", {"a": 1, "op": "+"}, turn=1),
        _call(6, "image_search", {"image": "img_1", "bbox": [0, 0, 500, 450]}),
        _call(6, "calculator", {"op": "+", "a": 1}, turn=1),
        _call(7, "text_search", EIFFEL),
    ]
    return advantages, mask, groups, success, calls


TAPO_CONFIGS = {
    "turn_span": TAPOConfig(theta=0.75),
    "call_span": TAPOConfig(theta=0.75, span="call"),
    "batch_scope_unclipped": TAPOConfig(theta=0.75, scope="batch", beta=2.0, clip_at_zero=False),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("config", TAPO_CONFIGS.values(), ids=TAPO_CONFIGS.keys())
def test_tapo_correct_on_target_device_matches_cpu(config, dtype):
    advantages, mask, groups, success, calls = _tapo_batch()
    advantages = advantages.to(dtype)
    expected, expected_stats = tapo_correct(advantages, mask, groups, success, calls, config)
    # The comparison means something only where TAPO changed advantages.
    assert expected_stats["corrected_tokens"] > 0 and not torch.equal(expected, advantages)

    # Group ids and success flags as device tensors too, as a trainer holding them on the GPU would pass them.
    device_advantages = advantages.to(DEVICE)
    corrected, stats = tapo_correct(
        device_advantages,
        mask.to(DEVICE),
        torch.tensor(groups, device=DEVICE),
        torch.tensor(success, device=DEVICE),
        calls,
        config,
    )

    _assert_on_target(corrected)
    assert corrected.dtype == dtype
    torch.testing.assert_close(corrected.cpu(), expected, rtol=0, atol=0)
    assert stats == expected_stats
    assert torch.equal(device_advantages.cpu(), advantages)  # the input is untouched on the device too


def test_correctable_rate_with_device_tensors_matches_cpu():
    _, _, groups, success, calls = _tapo_batch()
    config = TAPOConfig(theta=0.75)
    expected = correctable_rate(groups, success, calls, config)
    assert expected["failing_calls_correctable_frac"] > 0
    rate = correctable_rate(torch.tensor(groups, device=DEVICE), torch.tensor(success, device=DEVICE), calls, config)
    assert rate == expected
