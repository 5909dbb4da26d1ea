"""The in-process driver builds OpenRLHF's `ActorPPOTrainer` through its own constructor, with only the stand-ins
adapter/inprocess/trainer.py names (the in-process strategy, no weight-sync group), and renders its flags from the
run spec."""

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from openrlhf.trainer.ppo_utils import NaiveReplayBuffer
from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer
from transformers import SchedulerType

from openrlhf_tapo.adapter.inprocess.loop import build_openrlhf_args
from openrlhf_tapo.adapter.inprocess.trainer import InProcessStrategy, build_actor_trainer
from openrlhf_tapo.adapter.run_spec import RLConfig
from openrlhf_tapo.adapter.stage.openrlhf_loss import PolicyLoss

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


# ---- OpenRLHF's rules, through the in-process driver: its lr schedulers, and the IS correction's rollout log-probs

LR = RLConfig().lr
# lr / LR after 1 of 3 optimizer steps, no warmup (transformers' formulas; OpenRLHF's min_lr_ratio 0.1 and the
# cosine schedules' half cycle, polynomial's lr_end 1e-7 and power 1, inverse_sqrt's timescale 10_000)
LR_FACTOR_AFTER_ONE_OF_THREE = {
    "linear": 2 / 3,
    "cosine": 0.5 * (1 + math.cos(math.pi / 3)),
    "cosine_with_restarts": 0.5 * (1 + math.cos(math.pi / 3)),
    "polynomial": ((LR - 1e-7) * 2 / 3 + 1e-7) / LR,
    "constant": 1.0,
    "constant_with_warmup": 1.0,
    "inverse_sqrt": 1 / math.sqrt(10_001 / 10_000),
    "cosine_with_min_lr": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 3)),
    "cosine_warmup_with_min_lr": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 3)),
}
# OpenRLHF passes a schedule nothing but its warmup and training steps, and DeepSpeed's engine steps it without a
# metric: these three fail there (at set-up or at the first step), and are refused here before anything runs
NEEDS_WHAT_OPENRLHF_DOES_NOT_PASS = {"reduce_lr_on_plateau", "warmup_stable_decay", "greedy"}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from openrlhf.utils import get_tokenizer

    from openrlhf_tapo.agent.config import load_agent_config
    from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
    from openrlhf_tapo.task.prepare import TaskConfig, prepare_task, read_prompt_rows
    from openrlhf_tapo.task.questions import QuestionSetConfig, read_questions

    config = TaskConfig(
        kb=KnowledgeBaseConfig(num_entities=10, seed=1), questions=QuestionSetConfig(num_eval=2, seed=1)
    )
    paths = prepare_task(tmp_path_factory.mktemp("task"), config, progress=lambda _: None)
    return SimpleNamespace(
        paths=paths,
        processor=get_tokenizer(str(paths.model_dir), None, "left"),
        agent=load_agent_config(paths.agent_config),
        rows=read_prompt_rows(paths.prompts["train"]),
        questions=read_questions(paths.questions["train"]),
    )


def _driver(task, run_dir, *flags):
    """An InProcessRL of 3 steps over one prompt x 2 samples, with OpenRLHF `flags` added to the spec's."""
    from openrlhf_tapo.adapter.inprocess.loop import InProcessRL
    from openrlhf_tapo.adapter.inprocess.trainer import load_actor

    class Spec(RLConfig):
        def openrlhf_flags(self):
            return super().openrlhf_flags() + list(flags)

    spec = Spec(steps=3, prompts_per_step=1, n_samples_per_prompt=2, micro_batch_size=2, max_len=512, seed=1)
    actor = load_actor(str(task.paths.model_dir))
    return InProcessRL(actor, task.processor, task.agent, spec, task.paths.model_dir, run_dir)


@pytest.mark.parametrize("name", [scheduler.value for scheduler in SchedulerType])
def test_every_lr_scheduler_openrlhf_accepts_runs_an_in_process_step(task, tmp_path, name):
    """OpenRLHF's `--actor.lr_scheduler` is any name transformers' `get_scheduler` knows (no argparse choices)."""
    from openrlhf_tapo.task.warm_start import ScriptedEngine

    if name in NEEDS_WHAT_OPENRLHF_DOES_NOT_PASS:
        with pytest.raises(ValueError, match=f"--actor.lr_scheduler {name} .*choose another schedule"):
            _driver(task, tmp_path, "--actor.lr_scheduler", name)
        return
    rl = _driver(task, tmp_path, "--actor.lr_scheduler", name)
    question = task.questions[0]
    gold = list(question.gold_actions)
    wrong = gold[:-1] + [f"<answer>{question.distractor}</answer>"]
    tokenizer = task.processor.tokenizer
    before = [p.detach().clone() for p in rl.actor.parameters()]
    status = rl.step([task.rows[0]], engine=[ScriptedEngine(tokenizer, gold), ScriptedEngine(tokenizer, wrong)])

    assert status["rollout/reward_mean"] == 0.5  # one right, one wrong: nonzero advantages
    assert rl.strategy.optimizer_steps == 1 and rl.scheduler.last_epoch == 1
    want = LR * LR_FACTOR_AFTER_ONE_OF_THREE[name]
    assert [group["lr"] for group in rl.optimizer.param_groups] == [pytest.approx(want, rel=1e-12)] * 2
    assert status["actor_lr"] == pytest.approx(want, rel=1e-12)  # what OpenRLHF's training_step logs
    assert any(not torch.equal(p, q) for p, q in zip(rl.actor.parameters(), before, strict=True))
    assert "vllm_kl" not in status  # no IS correction asked for: no rollout log-probs either


def test_the_optimizer_groups_are_openrlhfs(task, tmp_path):
    """Weight decay as OpenRLHF's `get_optimizer_grouped_parameters` sets it: none on biases and norm weights."""
    rl = _driver(task, tmp_path, "--actor.adam.weight_decay", "0.01")
    decay, no_decay = rl.optimizer.param_groups
    names = {id(p): n for n, p in rl.actor.model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert no_decay["params"] and all(("bias" in names[id(p)] or "norm" in names[id(p)]) for p in no_decay["params"])
    assert not any(names[id(p)].endswith("bias") for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(rl.actor.parameters()))


def test_in_process_refuses_muon(task, tmp_path):
    with pytest.raises(ValueError, match="--actor.optim muon"):
        _driver(task, tmp_path, "--actor.optim", "muon")


def test_is_correction_asks_for_rollout_log_probs_and_reports_vllm_kl(task, tmp_path, monkeypatch):
    """Under `--algo.advantage.is_correction_level` OpenRLHF asks vLLM for the sampled tokens' log-probs; the
    actor's own engine returns them, they reach the experiences aligned with the actions, and OpenRLHF's correction
    in the loss reports vllm_kl. The engine and the trainer forward the same weights: the log-probs agree."""
    from openrlhf_tapo.adapter.inprocess import loop as inprocess_loop
    from openrlhf_tapo.adapter.inprocess.agent_rollouts import sampling_params

    rl = _driver(task, tmp_path, "--algo.advantage.is_correction_level", "token")
    assert sampling_params(rl.args).logprobs == 1
    assert sampling_params(build_openrlhf_args(RLConfig(), tmp_path, tmp_path)).logprobs is None
    seen, attach = [], inprocess_loop.attach_log_probs

    def recording(actor, experiences, **kwargs):
        seen.extend(attach(actor, experiences, **kwargs))
        return experiences

    monkeypatch.setattr(inprocess_loop, "attach_log_probs", recording)
    status = rl.step([task.rows[0]])

    assert sum(len(exp.sequences) for exp in seen) == 2
    for exp in seen:
        assert exp.rollout_log_probs is not None and exp.rollout_log_probs.shape == exp.action_log_probs.shape
        actions = exp.action_mask.bool()
        assert actions.sum() > 0
        rollout, trained = exp.rollout_log_probs[actions], exp.action_log_probs[actions]
        # log-probs of the sampled tokens, not the zeros the agent writes for prompt and observation tokens
        assert (rollout <= 0).all() and rollout.mean() < -0.01
        assert torch.allclose(rollout, trained, atol=1e-3)
    assert "vllm_kl" in status and abs(status["vllm_kl"]) < 1e-3
    assert status["is_filter_ratio"] == 0.0  # token mask at [0.5, 5]: nothing out of band at ratio ~1


def test_log_probs_and_the_update_use_the_rollout_temperature(task, tmp_path, monkeypatch):
    """OpenRLHF builds the trainer's actor with `temperature=args.rollout.temperature`: every actor forward of the
    step (the log-probs and the update) scores the temperature-scaled policy the rollout sampled from; the actor,
    shared with the warm start and the evaluations, is back at temperature 1 after the step."""
    from openrlhf.models import Actor

    from openrlhf_tapo.task.warm_start import ScriptedEngine

    rl = _driver(task, tmp_path, "--rollout.temperature", "0.5")
    seen, forward = [], Actor.forward

    def recording(self, *args, **kwargs):
        seen.append(self.temperature)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Actor, "forward", recording)
    question = task.questions[0]
    tokenizer = task.processor.tokenizer
    gold = list(question.gold_actions)
    rl.step([task.rows[0]], engine=[ScriptedEngine(tokenizer, gold), ScriptedEngine(tokenizer, gold)])
    assert len(seen) >= 2 and set(seen) == {0.5}  # the log-prob forward, then the training forward
    assert rl.actor.temperature == 1.0


def test_prompt_batches_draw_each_row_once_per_pass_in_the_seeded_order():
    import random

    from openrlhf_tapo.adapter.inprocess.loop import prompt_batches

    rows = [{"id": i} for i in range(5)]
    first, second = random.Random(7), None
    order = list(rows)
    first.shuffle(order)  # pass 1, popped from the end
    second = list(rows)
    first.shuffle(second)  # pass 2 draws from the same generator
    expected = [order[::-1][:3], order[::-1][3:] + second[::-1][:1], second[::-1][1:4]]
    batches = prompt_batches(rows, 3, seed=7)
    got = [next(batches) for _ in range(3)]
    assert got == expected
    assert sorted(r["id"] for r in got[0] + got[1][:2]) == list(range(5))  # the first pass holds every row once
