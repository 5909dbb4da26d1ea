"""The in-process driver builds OpenRLHF's `ActorPPOTrainer` through its own constructor, with only the stand-ins
adapter/inprocess.py names (the in-process strategy, no weight-sync group), and renders its flags from the run spec."""

import re
from pathlib import Path

import pytest
import torch
from openrlhf.trainer.ppo_utils import NaiveReplayBuffer
from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer

from openrlhf_tapo.adapter.inprocess import InProcessStrategy, build_actor_trainer
from openrlhf_tapo.adapter.inprocess_loop import build_openrlhf_args
from openrlhf_tapo.adapter.policy_loss import PolicyLoss
from openrlhf_tapo.adapter.run_spec import RLConfig

PACKAGE = Path(__file__).resolve().parent.parent / "openrlhf_tapo"


def test_trainer_is_built_by_openrlhfs_constructor(tmp_path, monkeypatch):
    config = RLConfig(prompts_per_step=2, n_samples_per_prompt=4, micro_batch_size=2, policy_loss_type="sapo")
    args = build_openrlhf_args(config, tmp_path / "model", tmp_path / "run")
    seen = []
    openrlhf_init = ActorPPOTrainer.__init__

    def recording_init(self, strategy, *a, **kw):
        seen.append(kw)
        openrlhf_init(self, strategy, *a, **kw)

    monkeypatch.setattr(ActorPPOTrainer, "__init__", recording_init)
    actor = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(actor.parameters())
    trainer = build_actor_trainer(InProcessStrategy(args, 4), actor, optimizer, None, tokenizer="tok")

    assert len(seen) == 1 and seen[0]["vllm_engines"] is None  # no vLLM engines: no weight-sync group opened
    assert not torch.distributed.is_initialized()  # and no process group for the barrier
    # what OpenRLHF's __init__ sets
    assert trainer.args is args and trainer.tokenizer == "tok" and trainer.generate_kwargs == {}
    assert (trainer.actor, trainer.actor_optim, trainer.ema_model) == (actor, optimizer, None)
    assert trainer.micro_train_batch_size == 2 and trainer.max_epochs == 1
    assert isinstance(trainer.replay_buffer, NaiveReplayBuffer) and trainer.replay_buffer.sample_batch_size == 2
    assert trainer.use_cuda_ipc is False and trainer.aux_loss is False
    # then our PolicyLoss from the same args, as the Ray workers' patched __init__ sets it
    assert isinstance(trainer.actor_loss_fn, PolicyLoss) and trainer.actor_loss_fn.policy_loss_type == "sapo"


def test_no_openrlhf_object_is_made_without_its_constructor():
    uses = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in PACKAGE.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.__new__\(", line)
    ]
    assert uses == []


@pytest.mark.parametrize(
    "tapo",
    [
        {},
        {
            "beta": 0.3,
            "turn_window": 2,
            "span": "call",
            "use_support": False,
            "similarity": {"text_search": "text_exact", "image_search": "image", "zoom": "bbox_iou"},
        },
    ],
)
def test_tapo_flags_resolve_to_the_spec_the_in_process_loop_uses(tmp_path, tapo):
    """Our launcher parses `tapo_flags` into the same `args.tapo` the in-process loop sets from the spec."""
    from openrlhf_tapo.algorithms.tapo import TAPOConfig
    from openrlhf_tapo.cli.train_ppo_ray import split_flags

    config = RLConfig(tapo=TAPOConfig(**tapo))
    ours = split_flags(config.tapo_flags())
    assert ours.tapo_enable is True and ours.tapo == config.tapo
    assert vars(build_openrlhf_args(config, tmp_path / "m", tmp_path / "r").tapo) == {
        "enable": True,
        **vars(config.tapo),
    }


def test_a_similarity_without_a_default_tool_cannot_be_rendered():
    """`--tapo.similarity` merges over the defaults, so a map that drops a default tool has no flags."""
    from openrlhf_tapo.algorithms.tapo import TAPOConfig

    with pytest.raises(ValueError, match="zoom"):
        RLConfig(tapo=TAPOConfig(similarity={"text_search": "text_exact", "image_search": "image"})).tapo_flags()


def test_step_estimators_resolve_to_the_spec_the_in_process_loop_uses(tmp_path):
    """GiGPO and the turn reward: the spec renders their flags, our launcher parses them into the configs the
    in-process loop sets on `args` from the spec, and an estimator not in the spec is off with its defaults."""
    from openrlhf_tapo.algorithms.gigpo import GiGPOConfig
    from openrlhf_tapo.algorithms.turn_reward import TurnRewardConfig
    from openrlhf_tapo.cli.train_ppo_ray import split_flags

    config = RLConfig(tapo_enable=False, step_credit={"gigpo": GiGPOConfig(gamma=0.9, mode="mean_std_norm")})
    flags = config.tapo_flags()
    assert flags == ["--tapo.disable", "--gigpo.enable", "--gigpo.gamma", "0.9", "--gigpo.mode", "mean_std_norm"]
    assert split_flags(flags).steps == config.step_credit
    args = build_openrlhf_args(config, tmp_path / "m", tmp_path / "r")
    assert vars(args.gigpo) == {"enable": True, **vars(config.step_credit["gigpo"])}
    assert vars(args.turn_reward) == {"enable": False, **vars(TurnRewardConfig())}
    assert not args.tapo.enable
    with pytest.raises(ValueError, match="step_credit\\['tapo'\\]"):
        RLConfig(step_credit={"tapo": GiGPOConfig()}).tapo_flags()
    with pytest.raises(ValueError, match="step_credit\\['gigpo'\\]"):
        RLConfig(step_credit={"gigpo": TurnRewardConfig()}).tapo_flags()
