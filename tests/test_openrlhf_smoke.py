"""Smoke tests: the REAL OpenRLHF 0.11.2 advantage stage and PolicyLoss run on CPU and give hand-computed values."""

import importlib.metadata
import math
from types import SimpleNamespace

import pytest
import torch

from openrlhf_tapo.adapter.stage.openrlhf_args import parse_openrlhf_args

N_SAMPLES = 4


def test_openrlhf_version_is_pinned():
    assert importlib.metadata.version("openrlhf") == "0.11.2"


def test_our_tests_are_not_openrlhf_tests():
    # OpenRLHF's wheel installs a top-level `tests` package; this file must not be part of it.
    import tests as openrlhf_tests

    assert openrlhf_tests.__file__.endswith("site-packages/tests/__init__.py")
    assert __name__ == "test_openrlhf_smoke"


@pytest.fixture(scope="module")
def grpo_args():
    return parse_openrlhf_args(
        [
            "--actor.model_name_or_path", "dummy",
            "--algo.advantage.estimator", "group_norm",
            "--rollout.n_samples_per_prompt", str(N_SAMPLES),
            "--rollout.batch_size", "2",
            "--rollout.micro_batch_size", "2",
            "--algo.kl.use_loss",
            "--algo.kl.estimator", "k3",
            "--actor.num_gpus_per_node", "1",
        ]
    )  # fmt: skip


def _experiences(rewards, lengths, micro=2):
    from openrlhf.trainer.ppo_utils.experience import Experience

    exps = []
    for start in range(0, len(rewards), micro):
        rows = range(start, min(start + micro, len(rewards)))
        width = max(lengths[i] for i in rows)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for r, i in enumerate(rows):
            mask[r, : lengths[i]] = True
        exps.append(
            Experience(
                sequences=torch.ones(len(rows), width + 3, dtype=torch.long),
                action_mask=mask,
                rewards=torch.tensor([rewards[i] for i in rows]),
                kl=torch.zeros(len(rows), width),
                index=list(rows),
                info={},
            )
        )
    return exps


def test_real_group_norm_advantages(grpo_args):
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    # Only strategy.args and kl_ctl.value are read by the advantage stage; no model groups are needed.
    strategy = SimpleNamespace(args=grpo_args)
    maker = RemoteExperienceMaker(None, None, None, None, SimpleNamespace(value=0.0), strategy, tokenizer=None)
    rewards = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    lengths = [3, 5, 2, 4, 1, 6, 3, 2]
    out = maker.compute_advantages_and_returns(_experiences(rewards, lengths))

    # Group 1 = [1, 0, 0, 0]: mean 0.25, unbiased std 0.5 -> advantages 1.5, -0.5, -0.5, -0.5.
    # Group 2 = [1, 1, 0, 1]: mean 0.75, std 0.5 -> 0.5, 0.5, -1.5, 0.5.
    expected = [1.5, -0.5, -0.5, -0.5, 0.5, 0.5, -1.5, 0.5]
    flat = [(exp, row) for exp in out for row in range(exp.advantages.shape[0])]
    for i, (exp, row) in enumerate(flat):
        adv = exp.advantages[row]
        n = lengths[i]
        # gamma = 1 and the reward sits on the last valid token: every valid token carries the group advantage.
        assert torch.allclose(adv[:n], torch.full((n,), expected[i]), atol=1e-6)
        assert torch.all(adv[n:] == 0)
    assert torch.allclose(out[0].info["group_reward_std"], torch.tensor([0.5, 0.5]))


def test_real_policy_loss_hand_value():
    from openrlhf.models.loss import PolicyLoss

    loss_fn = PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.2)
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    old = torch.zeros(1, 3)
    # ratios e^0.5 (clipped to 1.2 for A > 0), 1, e^-0.5 (clipped to 0.8 for A < 0 -> min picks 0.8 * -2)
    new = torch.tensor([[0.5, 0.0, -0.5]], requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, clip_ratio, ppo_kl, vllm_kl, is_filter = loss_fn(new, old, adv, action_mask=mask)
    per_token = [-min(math.exp(0.5), 1.2) * 1.0, -1.0, -min(math.exp(-0.5) * -2.0, 0.8 * -2.0)]
    assert loss.item() == pytest.approx(sum(per_token) / 3, rel=1e-6)
    assert clip_ratio.item() == pytest.approx(2 / 3)
    assert ppo_kl.item() == pytest.approx(0.0, abs=1e-7)
    assert vllm_kl is None and is_filter is None
    loss.backward()
    # Clipped tokens get no gradient; the unclipped middle token gets -A * ratio / 3.
    assert torch.allclose(new.grad, torch.tensor([[0.0, -1.0 / 3, 0.0]]), atol=1e-6)


def test_openrlhf_validation_rejects_group_norm_with_one_sample():
    with pytest.raises(AssertionError, match="n_samples_per_prompt > 1"):
        parse_openrlhf_args(["--actor.model_name_or_path", "dummy", "--algo.advantage.estimator", "group_norm"])
