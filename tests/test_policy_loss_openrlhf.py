"""Our PolicyLoss against the REAL OpenRLHF 0.11.2 PolicyLoss: same numbers, same contract, new types."""

import ast
import inspect
import logging
import math
from pathlib import Path

import openrlhf
import pytest
import torch
from openrlhf.models.loss import PolicyLoss as OpenRLHFPolicyLoss
from openrlhf.utils.loss_utils import get_loss_batch_info

from openrlhf_tapo.adapter.stage import openrlhf_loss as adapter
from openrlhf_tapo.adapter.stage.openrlhf_args import parse_openrlhf_args
from openrlhf_tapo.adapter.stage.openrlhf_loss import PolicyLoss, build_policy_loss

TYPES = ["ppo", "gspo", "gspo_token", "sapo"]

# (level, mode, gating, threshold): off, TIS, ICEPOP, seq-mask-tis, token/seq trust regions.
IS_CORRECTIONS = [
    ("off", "mask", "ratio", (0.5, 5.0)),
    ("token", "clip", "ratio", (0.8, 1.2)),
    ("token", "mask", "ratio", (0.8, 1.2)),
    ("seq", "mask", "ratio", (0.95, 1.05)),
    ("token", "mask", "binary_kl", (0.0, 0.02)),
    ("seq", "mask", "tv", (0.0, 0.05)),
]


def _random_batch(seed, batch=6, length=9):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 3
    log_probs = old + torch.randn(batch, length, generator=gen, dtype=torch.float64) * 0.15
    rollout = old + torch.randn(batch, length, generator=gen, dtype=torch.float64) * 0.1
    advantages = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    mask = torch.arange(length)[None, :] < lengths[:, None]  # bool, as OpenRLHF's Experience holds it
    mask[-1] = False  # a fully masked row (all-padding micro-batch sample)
    return log_probs, old, advantages, mask, rollout


def _forward(loss_fn, batch, **loss_batch_info):
    log_probs, old, advantages, mask, rollout = batch
    log_probs = log_probs.clone().requires_grad_(True)
    out = loss_fn(log_probs, old, advantages, action_mask=mask, rollout_log_probs=rollout, **loss_batch_info)
    out[0].backward()
    return out, log_probs.grad


@pytest.mark.parametrize("loss_type", ["ppo", "gspo"])
@pytest.mark.parametrize("correction", IS_CORRECTIONS, ids=lambda c: "-".join(map(str, c[:3])))
@pytest.mark.parametrize("token_level_loss", [True, False])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_matches_openrlhf(loss_type, correction, token_level_loss, dual_clip):
    level, mode, gating, threshold = correction
    kwargs = dict(
        clip_eps_low=0.1,
        clip_eps_high=0.15,
        dual_clip=dual_clip,
        token_level_loss=token_level_loss,
        policy_loss_type=loss_type,
        is_correction_level=level,
        is_correction_mode=mode,
        is_correction_gating=gating,
        is_correction_threshold=list(threshold),
    )
    for seed, loss_batch_info in [(0, {}), (1, {"dp_size": 2, "batch_num_tokens": 70.0, "global_batch_size": 11.0})]:
        batch = _random_batch(seed)
        expected, expected_grad = _forward(OpenRLHFPolicyLoss(**kwargs), batch, **loss_batch_info)
        got, grad = _forward(PolicyLoss(**kwargs), batch, **loss_batch_info)
        assert len(got) == 5
        for name, e, g in zip(
            ["loss", "clip_ratio", "ppo_kl", "vllm_kl", "is_filter_ratio"], expected, got, strict=True
        ):
            if e is None:
                assert g is None, name
            else:
                torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12, msg=name)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_type", TYPES)
@pytest.mark.parametrize("correction", ["off", "token"])
def test_return_contract_as_the_actor_calls_it(loss_type, correction):
    batch = _random_batch(2)
    mask = batch[3]
    # ActorPPOTrainer.training_step: self.actor_loss_fn(..., action_mask=, rollout_log_probs=, **loss_batch_info)
    loss_batch_info = get_loss_batch_info(None, mask)
    loss_fn = PolicyLoss(
        policy_loss_type=loss_type, clip_eps_low=3e-4, clip_eps_high=4e-4, is_correction_level=correction
    )
    (loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio), grad = _forward(loss_fn, batch, **loss_batch_info)
    for value in (loss, clip_ratio, ppo_kl):
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and torch.isfinite(value)
    assert loss.requires_grad and not clip_ratio.requires_grad and not ppo_kl.requires_grad
    assert torch.all(grad[~mask] == 0) and grad[mask].abs().sum() > 0
    if correction == "token" and loss_type in ("ppo", "sapo"):
        assert vllm_kl.dim() == 0 and 0 <= is_filter_ratio.item() <= 1
    else:  # off, or a sequence-ratio loss that takes the correction into its ratio (OpenRLHF's gspo)
        assert vllm_kl is None and is_filter_ratio is None


def _two_sequences():
    # Sequence 0 has 1 valid token, sequence 1 has 3; ratio 1 everywhere.
    log_probs = torch.full((2, 3), -1.0, dtype=torch.float64)
    advantages = torch.tensor([[2.0, 9.0, 9.0], [1.0, -1.0, 3.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    return log_probs, log_probs.clone(), advantages, mask, None


# Per-token loss at ratio 1: ppo / gspo / gspo_token give -A, sapo gives -2 A / tau (tau_neg = 1.05 for A <= 0).
PER_TOKEN_AT_RATIO_ONE = {
    "ppo": [[-2.0, 0, 0], [-1.0, 1.0, -3.0]],
    "gspo": [[-2.0, 0, 0], [-1.0, 1.0, -3.0]],
    "gspo_token": [[-2.0, 0, 0], [-1.0, 1.0, -3.0]],
    "sapo": [[-4.0, 0, 0], [-2.0, 2.0 / 1.05, -6.0]],
}


@pytest.mark.parametrize("loss_type", TYPES)
@pytest.mark.parametrize("token_level_loss", [True, False])
def test_hand_computed_aggregation(loss_type, token_level_loss):
    per_token = torch.tensor(PER_TOKEN_AT_RATIO_ONE[loss_type], dtype=torch.float64)
    loss_fn = PolicyLoss(policy_loss_type=loss_type, token_level_loss=token_level_loss)
    (loss, clip_ratio, ppo_kl, *_), grad = _forward(loss_fn, _two_sequences())
    assert clip_ratio.item() == 0.0 and ppo_kl.item() == 0.0
    if token_level_loss and loss_type in ("ppo", "sapo"):  # global token mean over 4 tokens
        expected = per_token.sum() / 4
    else:  # sequence mean of token means (always for the GSPO losses)
        expected = (per_token[0, 0] + per_token[1].mean()) / 2
    assert loss.item() == pytest.approx(expected.item())

    if loss_type == "gspo":  # gradient through the sequence mean: -mean(A_i) / |y_i| / B on every token of i
        expected_grad = [[-2.0 / 2, 0, 0], [-(3.0 / 3) / 3 / 2] * 3]  # mean(A_1) = 1
    elif token_level_loss and loss_type in ("ppo", "sapo"):  # -A_t / N
        expected_grad = [[-2.0 / 4, 0, 0], [-1.0 / 4, 1.0 / 4, -3.0 / 4]]
    else:  # -A_t / |y_i| / B
        expected_grad = [[-2.0 / 2, 0, 0], [-1.0 / 6, 1.0 / 6, -3.0 / 6]]
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64))


def test_global_normalisers_and_dp_size_are_used():
    batch = _two_sequences()
    per_token = torch.tensor(PER_TOKEN_AT_RATIO_ONE["sapo"], dtype=torch.float64)
    (loss, *_), _ = _forward(PolicyLoss(policy_loss_type="sapo"), batch, dp_size=4, batch_num_tokens=16.0)
    assert loss.item() == pytest.approx(per_token.sum().item() / 16 * 4)
    (loss, *_), _ = _forward(PolicyLoss(policy_loss_type="gspo_token"), batch, dp_size=2, global_batch_size=8.0)
    assert loss.item() == pytest.approx((-2.0 + (-1.0 + 1.0 - 3.0) / 3) / 8 * 2)


def test_openrlhf_gspo_averages_per_token_advantages_away_ours_keep_them():
    log_probs, old, _, mask, _ = _random_batch(3, batch=2, length=4)
    mask = torch.ones_like(mask)
    flat = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    tapo = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -0.0, -0.0, -3.0]], dtype=torch.float64)  # same means
    wide = dict(clip_eps_low=10.0, clip_eps_high=10.0)  # no clipping: compare the raw gradients

    def grad(loss_fn, advantages):
        return _forward(loss_fn, (log_probs, old, advantages, mask, None))[1]

    openrlhf_gspo = OpenRLHFPolicyLoss(policy_loss_type="gspo", **wide)
    torch.testing.assert_close(grad(openrlhf_gspo, flat), grad(openrlhf_gspo, tapo))
    for loss_type in ("gspo_token", "sapo"):
        ours = PolicyLoss(policy_loss_type=loss_type, **wide)
        g_flat, g_tapo = grad(ours, flat), grad(ours, tapo)
        assert not torch.allclose(g_flat[1], g_tapo[1])
        torch.testing.assert_close(g_flat[0], g_tapo[0])
        if loss_type == "gspo_token":  # s_i * A_t * dlog pi / (|y| B): proportional to A_t inside a sequence
            s = torch.exp((log_probs - old)[1].mean())
            torch.testing.assert_close(g_tapo[1], -s * tapo[1] / 8)


def test_sapo_is_correction_weights_tokens_like_ppo():
    log_probs = torch.zeros(1, 3, dtype=torch.float64)
    advantages = torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    # pi_train / pi_rollout = 2, 10, 0.9: ICEPOP [0.5, 5] drops token 1, keeps the others with their IS weight.
    rollout = -torch.log(torch.tensor([[2.0, 10.0, 0.9]], dtype=torch.float64))
    loss_fn = PolicyLoss(policy_loss_type="sapo", is_correction_level="token", is_correction_mode="mask")
    (loss, _, _, vllm_kl, is_filter_ratio), _ = _forward(loss_fn, (log_probs, log_probs, advantages, mask, rollout))
    assert loss.item() == pytest.approx((2.0 * -2.0 + 0.9 * 2.0 / 1.05) / 3)
    assert is_filter_ratio.item() == pytest.approx(1 / 3)
    assert vllm_kl.item() == pytest.approx(-(math.log(2.0) + math.log(10.0) + math.log(0.9)) / 3)


def test_gspo_clip_default_warns_once_and_aggregation_override_is_logged(caplog, monkeypatch):
    monkeypatch.setattr(adapter, "_logged_once", set())

    def logged(level):
        return [record.getMessage() for record in caplog.records if record.levelno == level]

    with caplog.at_level(logging.INFO, logger=adapter.__name__):
        PolicyLoss(policy_loss_type="ppo")
        PolicyLoss(policy_loss_type="gspo_token", clip_eps_low=3e-4, clip_eps_high=4e-4, token_level_loss=False)
        assert not caplog.records
        PolicyLoss(policy_loss_type="gspo")
        PolicyLoss(policy_loss_type="gspo_token")
    assert (
        len(logged(logging.WARNING)) == 1 and "--actor.eps_clip_low_high 0.0003 0.0004" in logged(logging.WARNING)[0]
    )
    assert len(logged(logging.INFO)) == 1 and "seq-mean-token-mean" in logged(logging.INFO)[0]


def test_bad_configurations_are_rejected():
    with pytest.raises(ValueError, match="unknown policy loss 'grpo'"):
        PolicyLoss(policy_loss_type="grpo")
    with pytest.raises(ValueError, match="dual_clip has no effect on sapo"):
        PolicyLoss(policy_loss_type="sapo", dual_clip=3.0)
    with pytest.raises(ValueError, match="sapo_tau_pos/neg must be > 0"):
        PolicyLoss(policy_loss_type="sapo", sapo_tau_neg=0.0)
    with pytest.raises(ValueError, match="is_correction_level"):  # OpenRLHF's own validation still runs
        PolicyLoss(policy_loss_type="sapo", is_correction_level="tokens")
    batch = _random_batch(4)
    with pytest.raises(ValueError, match="needs rollout_log_probs"):
        PolicyLoss(policy_loss_type="sapo", is_correction_level="seq")(*batch[:4], rollout_log_probs=None)


def test_accepts_every_argument_the_actor_passes():
    """ActorPPOTrainer.__init__ calls the module global `PolicyLoss` with keywords only: ours takes them all."""
    # Read from source (importing the Ray actor module costs seconds).
    tree = ast.parse((Path(openrlhf.__file__).parent / "trainer" / "ray" / "ppo_actor.py").read_text())
    imported = [
        node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and any(alias.name == "PolicyLoss" for alias in node.names)
    ]
    assert imported == ["openrlhf.models"]  # the module global the integration replaces in every worker
    trainer = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "ActorPPOTrainer")
    init = next(node for node in trainer.body if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    calls = [
        node
        for node in ast.walk(init)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "PolicyLoss"
    ]
    assert len(calls) == 1 and not calls[0].args
    passed = {keyword.arg for keyword in calls[0].keywords}
    ours = set(inspect.signature(PolicyLoss.__init__).parameters)
    theirs = set(inspect.signature(OpenRLHFPolicyLoss.__init__).parameters)
    assert passed <= theirs <= ours and ours - theirs == {"sapo_tau_pos", "sapo_tau_neg"}


def test_build_policy_loss_from_openrlhf_args():
    args = parse_openrlhf_args(
        [
            "--actor.model_name_or_path", "dummy",
            "--algo.advantage.estimator", "group_norm",
            "--rollout.n_samples_per_prompt", "4",
            "--actor.policy_loss_type", "gspo",
            "--actor.eps_clip_low_high", "3e-4", "4e-4",
            "--algo.advantage.is_correction_level", "token",
            "--algo.advantage.is_correction_threshold", "2.0",
        ]
    )  # fmt: skip
    loss_fn = build_policy_loss(args)
    assert (loss_fn.policy_loss_type, loss_fn.clip_eps_low, loss_fn.clip_eps_high) == ("gspo", 3e-4, 4e-4)
    assert loss_fn.token_level_loss is False and loss_fn.is_correction_threshold == [0.0, 2.0]
    assert (loss_fn.config.sapo_tau_pos, loss_fn.config.sapo_tau_neg) == (1.0, 1.05)

    args.actor.policy_loss_type, args.actor.sapo_tau_pos, args.actor.sapo_tau_neg = "sapo", 0.5, 2.0  # our CLI's flags
    loss_fn = build_policy_loss(args)
    assert loss_fn.policy_loss_type == "sapo" and loss_fn.token_level_loss is True
    assert (loss_fn.config.sapo_tau_pos, loss_fn.config.sapo_tau_neg) == (0.5, 2.0)
