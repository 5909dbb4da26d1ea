"""The pure policy losses (openrlhf_tapo.algorithms.policy_loss): hand-computed values and gradients."""

import math

import pytest
import torch

from openrlhf_tapo.algorithms.policy_loss import (
    GSPO_TOKEN_LOG_RATIO_MAX,
    POLICY_LOSSES,
    PPO_LOG_RATIO_LIMIT,
    PolicyLossConfig,
    get_policy_loss,
    gspo_loss,
    gspo_token_loss,
    ppo_loss,
    sapo_loss,
)

CFG = PolicyLossConfig()


def _run(loss_fn, log_ratio, advantages, mask=None, config=CFG):
    """Loss for log pi = log_ratio, log pi_old = 0: (per-token loss, metrics, d(sum of valid loss) / d log pi)."""
    log_ratio = torch.as_tensor(log_ratio, dtype=torch.float64)
    advantages = torch.as_tensor(advantages, dtype=torch.float64)
    mask = torch.ones_like(log_ratio) if mask is None else torch.as_tensor(mask, dtype=torch.float64)
    log_probs = log_ratio.clone().requires_grad_(True)
    loss, metrics = loss_fn(log_probs, torch.zeros_like(log_ratio), advantages, mask, config)
    (loss * mask).sum().backward()
    return loss.detach(), metrics, log_probs.grad


def test_registry_names_and_unknown_name():
    assert set(POLICY_LOSSES) == {"ppo", "gspo", "gspo_token", "sapo"}
    assert get_policy_loss("sapo") is sapo_loss
    with pytest.raises(ValueError, match="unknown policy loss 'grpo'.*gspo_token"):
        get_policy_loss("grpo")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clip_eps_low": -0.1}, "clip_eps_low/high"),
        ({"dual_clip": 1.0}, "dual_clip must be > 1.0"),
        ({"sapo_tau_neg": 0.0}, "sapo_tau_pos/neg"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolicyLossConfig(**kwargs)


def test_ppo_clip_values_gradients_and_fraction():
    # r = 1.5, A = 1: clipped to 1.2 ; r = 0.7, A = -1: clipped to 0.8 ; r = 1.1, A = 2: inside the band.
    loss, metrics, grad = _run(ppo_loss, [[math.log(1.5), math.log(0.7), math.log(1.1)]], [[1.0, -1.0, 2.0]])
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 0.8, -2.2]], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -2.2]], dtype=torch.float64))  # -r A where unclipped
    assert metrics["clip_fraction"].item() == pytest.approx(2 / 3)
    expected_kl = -(math.log(1.5) + math.log(0.7) + math.log(1.1)) / 3
    assert metrics["approx_kl"].item() == pytest.approx(expected_kl)


def test_ppo_dual_clip_bounds_negative_advantages():
    log_ratio, advantages = [[math.log(5.0), math.log(2.0), math.log(5.0)]], [[-1.0, -1.0, 1.0]]
    loss, _, grad = _run(ppo_loss, log_ratio, advantages)
    torch.testing.assert_close(loss, torch.tensor([[5.0, 2.0, -1.2]], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([[5.0, 2.0, 0.0]], dtype=torch.float64))

    loss, _, grad = _run(ppo_loss, log_ratio, advantages, config=PolicyLossConfig(dual_clip=3.0))
    # r A = -5 is floored at 3 A = -3 (no gradient); r A = -2 is above the floor; A > 0 is untouched.
    torch.testing.assert_close(loss, torch.tensor([[3.0, 2.0, -1.2]], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64))


def test_ppo_log_ratio_is_clamped():
    loss, _, _ = _run(ppo_loss, [[25.0]], [[-1.0]])
    assert loss.item() == pytest.approx(math.exp(PPO_LOG_RATIO_LIMIT))


def test_gspo_at_sequence_ratio_one_is_minus_mean_advantage():
    # Token log-ratios that cancel give s = 1 even though no single token ratio is 1.
    loss, metrics, grad = _run(gspo_loss, [[0.3, -0.3, 0.0]], [[1.0, 2.0, 6.0]])
    torch.testing.assert_close(loss, torch.tensor([[-1.0, -2.0, -6.0]], dtype=torch.float64))
    assert loss.mean().item() == pytest.approx(-3.0)  # seq-mean-token-mean value = -mean(A)
    # The gradient of sum_t -s A_t flows through s = exp(mean_t log r): every token gets -s * mean(A) = -3.
    torch.testing.assert_close(grad, torch.full((1, 3), -3.0, dtype=torch.float64))
    assert metrics["clip_fraction"].item() == 0.0


def test_gspo_clips_the_sequence_ratio():
    # mean log r = 0.3 -> s = e^0.3 = 1.35 > 1.2: clipped for A > 0, the whole sequence gets no gradient.
    loss, metrics, grad = _run(gspo_loss, [[0.2, 0.4]], [[1.0, 1.0]])
    torch.testing.assert_close(loss, torch.full((1, 2), -1.2, dtype=torch.float64))
    torch.testing.assert_close(grad, torch.zeros(1, 2, dtype=torch.float64))
    assert metrics["clip_fraction"].item() == 1.0


def test_gspo_token_value_is_s_and_gradient_is_per_token_s_times_advantage():
    log_ratio, advantages = [[0.1, -0.2, 0.25]], [[0.5, -1.0, 3.0]]
    s = math.exp((0.1 - 0.2 + 0.25) / 3)
    config = PolicyLossConfig(clip_eps_low=0.5, clip_eps_high=0.5)  # keep s inside the band
    loss, metrics, grad = _run(gspo_token_loss, log_ratio, advantages, config=config)
    expected = torch.tensor([[-s * 0.5, s * 1.0, -s * 3.0]], dtype=torch.float64)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected)  # d(-s A_t)/d log pi_t = -s A_t
    gspo_value, gspo_metrics, _ = _run(gspo_loss, log_ratio, advantages, config=config)
    torch.testing.assert_close(loss, gspo_value)  # same values as gspo, different gradient
    assert metrics["clip_fraction"] == gspo_metrics["clip_fraction"] == 0.0


def test_gspo_token_clips_per_sequence_and_clamps_the_log_ratio():
    loss, metrics, grad = _run(gspo_token_loss, [[0.2, 0.4]], [[1.0, -1.0]])
    s = math.exp(0.3)  # clipped at 1.2 for A > 0 (no gradient); for A < 0 min picks r A (gradient -s A)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, s]], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([[0.0, s]], dtype=torch.float64))
    assert metrics["clip_fraction"].item() == 0.5

    loss, _, grad = _run(gspo_token_loss, [[15.0, 15.0]], [[-1.0, -1.0]])
    torch.testing.assert_close(loss, torch.full((1, 2), math.exp(GSPO_TOKEN_LOG_RATIO_MAX), dtype=torch.float64))
    torch.testing.assert_close(grad, torch.zeros(1, 2, dtype=torch.float64))


def test_sapo_at_ratio_one_is_plain_policy_gradient():
    advantages = [[2.0, -1.0, 0.0]]
    loss, metrics, grad = _run(sapo_loss, [[0.0, 0.0, 0.0]], advantages)
    # value -2 A / tau with tau_pos = 1.0 for A > 0 and tau_neg = 1.05 for A <= 0
    torch.testing.assert_close(loss, torch.tensor([[-4.0, 2.0 / 1.05, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([[-2.0, 1.0, 0.0]], dtype=torch.float64))  # -A
    assert metrics["clip_fraction"].item() == 0.0


def test_sapo_soft_gate_off_policy():
    tau_pos, tau_neg = 1.0, 1.05
    r_pos, r_neg, r_far = math.exp(0.5), math.exp(-0.4), math.exp(2.0)
    loss, metrics, grad = _run(sapo_loss, [[0.5, -0.4, 2.0]], [[1.5, -2.0, 1.0]])

    def sig(x):
        return 1 / (1 + math.exp(-x))

    def value(r, a, tau):
        return -(4 / tau) * sig(tau * (r - 1)) * a

    def gradient(r, a, tau):  # -A * w * r with gate weight w = 4 sigma (1 - sigma)
        p = sig(tau * (r - 1))
        return -a * 4 * p * (1 - p) * r

    expected_loss = [[value(r_pos, 1.5, tau_pos), value(r_neg, -2.0, tau_neg), value(r_far, 1.0, tau_pos)]]
    expected_grad = [[gradient(r_pos, 1.5, tau_pos), gradient(r_neg, -2.0, tau_neg), gradient(r_far, 1.0, tau_pos)]]
    torch.testing.assert_close(loss, torch.tensor(expected_loss, dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64))
    # Only r = e^2 has a gate weight below 0.5 (4 sigma(6.39)(1 - sigma(6.39)) = 0.0067).
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_masked_tokens_contribute_nothing(name):
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    log_ratio = torch.randn(2, 4, dtype=torch.float64) * 0.1
    advantages = torch.randn(2, 4, dtype=torch.float64)
    loss, metrics, grad = _run(POLICY_LOSSES[name], log_ratio, advantages, mask)

    garbage = torch.where(mask.bool(), log_ratio, torch.full_like(log_ratio, 7.0))
    wild = torch.where(mask.bool(), advantages, torch.full_like(advantages, -50.0))
    loss2, metrics2, grad2 = _run(POLICY_LOSSES[name], garbage, wild, mask)
    torch.testing.assert_close(loss * mask, loss2 * mask)
    torch.testing.assert_close(grad, grad2)
    assert torch.all(grad[mask == 0] == 0)
    for key in ("clip_fraction", "approx_kl"):
        torch.testing.assert_close(metrics[key], metrics2[key])


def _equal_mean_advantages():
    # Same sequence mean (1.0), different per-token values: TAPO's corrected tool-call span is token 1.
    return [[1.0, 1.0, 1.0]], [[1.5, 0.0, 1.5]]


def test_gspo_averages_per_token_advantages_away():
    flat, tapo = _equal_mean_advantages()
    _, _, grad_flat = _run(gspo_loss, [[0.05, -0.02, 0.01]], flat)
    _, _, grad_tapo = _run(gspo_loss, [[0.05, -0.02, 0.01]], tapo)
    torch.testing.assert_close(grad_flat, grad_tapo)


@pytest.mark.parametrize("name", ["gspo_token", "sapo"])
def test_token_losses_propagate_per_token_advantages(name):
    flat, tapo = _equal_mean_advantages()
    _, _, grad_flat = _run(POLICY_LOSSES[name], [[0.0, 0.0, 0.0]], flat)
    _, _, grad_tapo = _run(POLICY_LOSSES[name], [[0.0, 0.0, 0.0]], tapo)
    # At ratio 1 both gradients are exactly -A_t per token.
    torch.testing.assert_close(grad_flat, -torch.tensor(flat, dtype=torch.float64))
    torch.testing.assert_close(grad_tapo, -torch.tensor(tapo, dtype=torch.float64))


@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
def test_dual_clip_floors_the_sequence_ratio_losses(name):
    # s = e^2 = 7.39 with A < 0: the surrogate s A is floored at 3 A, and the floor passes no gradient.
    config = PolicyLossConfig(clip_eps_low=3e-4, clip_eps_high=4e-4, dual_clip=3.0)
    loss, metrics, grad = _run(POLICY_LOSSES[name], [[2.0, 2.0]], [[-1.0, -2.0]], config=config)
    torch.testing.assert_close(loss, torch.tensor([[3.0, 6.0]], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.zeros(1, 2, dtype=torch.float64))
    assert metrics["clip_fraction"].item() == 0.0  # for A < 0 and s > 1 the hard clip itself is not active


def test_sapo_tau_is_exact_in_float64():
    # tau_neg = 1.05 is not a float32 number: built as float32, the loss is off by ~5e-8 relative.
    config = PolicyLossConfig(sapo_tau_pos=1.0, sapo_tau_neg=1.05)
    loss, _, _ = _run(sapo_loss, [[0.3, -0.2]], [[-1.5, 2.0]], config=config)
    r0, r1 = math.exp(0.3), math.exp(-0.2)
    expected0 = -(4 / 1.05) * (1 / (1 + math.exp(-1.05 * (r0 - 1)))) * -1.5
    expected1 = -(4 / 1.0) * (1 / (1 + math.exp(-1.0 * (r1 - 1)))) * 2.0
    assert loss.dtype == torch.float64
    assert loss[0, 0].item() == pytest.approx(expected0, rel=1e-12, abs=0)
    assert loss[0, 1].item() == pytest.approx(expected1, rel=1e-12, abs=0)


def test_gspo_token_value_is_the_sequence_ratio_in_float64():
    log_ratio = [[0.1, -0.3, 0.05, 0.2]]
    seq = sum(log_ratio[0]) / 4
    loss, _, _ = _run(gspo_token_loss, log_ratio, [[1.0, -2.0, 0.5, 3.0]], config=PolicyLossConfig(0.5, 0.5))
    expected = [-math.exp(seq) * a for a in (1.0, -2.0, 0.5, 3.0)]
    for got, want in zip(loss[0].tolist(), expected, strict=True):
        assert got == pytest.approx(want, rel=1e-12, abs=0)


def test_gspo_token_clamps_a_sequence_log_ratio_just_above_the_limit():
    # Rows whose sequence log-ratio is exactly 10 + 1 ulp: every token is above the clamp, so every token's value is
    # exp(10) and no gradient passes. Rounding per token ((seq + lp) - sg(lp)) brings some tokens back to 10.
    above = math.nextafter(GSPO_TOKEN_LOG_RATIO_MAX, math.inf)
    log_probs = -torch.rand(200, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 60
    old = log_probs - above
    rows = ((log_probs - old).mean(-1) == above).nonzero().squeeze(-1)
    log_probs, old = log_probs[rows].clone().requires_grad_(True), old[rows]
    assert len(rows) >= 20
    advantages = -torch.ones_like(old)  # A < 0: the loss is r |A| however far r is above the band
    loss, _ = gspo_token_loss(log_probs, old, advantages, torch.ones_like(old), CFG)
    loss.sum().backward()
    assert torch.equal(loss.detach(), torch.full_like(old, math.exp(GSPO_TOKEN_LOG_RATIO_MAX)))
    assert torch.equal(log_probs.grad, torch.zeros_like(old))


def test_gspo_token_one_clip_decision_per_sequence_in_float32():
    # Sequences whose log-ratio sits on the upper clip edge, with token log-probs of very different sizes: rounding
    # per token ((seq + lp) - sg(lp)) would put some tokens of one sequence inside the band and others outside.
    generator = torch.Generator().manual_seed(0)
    log_probs = -torch.rand(64, 32, generator=generator, dtype=torch.float32) * 40
    edge = math.log(1.2)
    seq = edge + torch.linspace(-3e-7, 3e-7, 64, dtype=torch.float32).unsqueeze(-1)
    old = log_probs - seq
    log_probs.requires_grad_(True)
    mask = torch.ones_like(old)
    loss, _ = gspo_token_loss(log_probs, old, torch.ones_like(old), mask, PolicyLossConfig())
    loss.sum().backward()
    clipped = log_probs.grad == 0  # A > 0 above the band: the clipped branch carries no gradient
    assert all(row.all() or not row.any() for row in clipped)
    assert all(len(set(row.tolist())) == 1 for row in loss.detach())  # one ratio per sequence
    assert 0 < int(clipped.all(-1).sum()) < 64  # the batch does straddle the edge
