"""The run presets (runners/run_presets.py) are the one definition of a bundled-task run's sizes: the demo and the
study resolve to them, and their values are pinned here to the ones every documented run so far used (2026-12-06;
a change to a preset or to a config class's default must change this file, and say why)."""

import argparse
import dataclasses

import pytest

from openrlhf_tapo.cli import study
from openrlhf_tapo.runners import study_plan
from openrlhf_tapo.runners.demo_stages import build_configs
from openrlhf_tapo.runners.run_presets import RUN_PRESETS, run_preset

TAPO = {
    "beta": 0.8, "theta": 0.8, "alpha_min": 0.25, "scope": "group", "span": "turn", "turn_window": None,
    "obs_check": "off", "obs_min_overlap": 0.5, "use_support": True, "clip_at_zero": True, "success_threshold": 1.0,
    "similarity": {"text_search": "text_fuzzy", "image_search": "image", "zoom": "bbox_iou"},
}  # fmt: skip
RL = {
    "steps": 12, "prompts_per_step": 8, "n_samples_per_prompt": 8, "micro_batch_size": 8, "updates_per_step": 1,
    "lr": 0.0005, "temperature": 1.0, "max_len": 1536, "policy_loss_type": "ppo", "entropy_coef": None,
    "tapo_enable": True, "tapo": TAPO, "step_credit": {}, "seed": 0,
}  # fmt: skip
TASK = {
    "kb": {"num_entities": 512, "image_size": 56, "seed": 0},
    "questions": {"num_eval": 128, "seed": 0, "num_select": 0},
    "max_turns": 4, "max_tokens_per_turn": 32, "text_top_k": 2, "image_top_k": 1, "vocab_size": 512, "model_seed": 0,
    "model_hidden_size": 128, "model_mrope_section": (4, 6, 6), "model_family": "qwen2_5_vl", "recall_cost": None,
}  # fmt: skip
WARM = {
    "traces": 1024, "content_steps": 400, "direct_share": 0.2, "misread_share": 0.45, "known_search_share": 0.5,
    "steps": 500, "batch_size": 32, "lr": 0.002, "warmup_steps": 20, "min_lr_ratio": 0.5, "weight_decay": 0.0,
    "seed": 0,
}  # fmt: skip
QUICK_TASK = TASK | {"kb": TASK["kb"] | {"num_entities": 24}, "questions": TASK["questions"] | {"num_eval": 8}}
QUICK_WARM = WARM | {"traces": 16, "content_steps": 0, "steps": 100, "batch_size": 4, "lr": 0.005, "warmup_steps": 2}
QUICK_RL = RL | {"steps": 2, "prompts_per_step": 2, "n_samples_per_prompt": 4, "micro_batch_size": 4, "max_len": 512}

PINNED = {
    "study": (TASK, WARM, RL),
    "demo": (TASK | {"questions": TASK["questions"] | {"num_eval": 64}}, WARM | {"steps": 400, "content_steps": 300},
             RL | {"max_len": 512}),
    "quick": (QUICK_TASK, QUICK_WARM, QUICK_RL),
    "cpu_script": (QUICK_TASK, QUICK_WARM, QUICK_RL | {"lr": 1e-3, "max_len": 1024, "seed": 42}),
}  # fmt: skip


def _asdict(configs) -> tuple[dict, ...]:
    return tuple(dataclasses.asdict(c) for c in configs)


@pytest.mark.parametrize("name", RUN_PRESETS)
def test_each_preset_is_pinned(name):
    preset = run_preset(name)
    assert _asdict((preset.task, preset.warm, preset.rl)) == PINNED[name]


def _demo_args(quick: bool, **flags) -> argparse.Namespace:
    defaults = dict(steps=None, warm_steps=None, content_steps=None, lr=None, updates_per_step=None, entropy_coef=None)
    flags = defaults | dict(policy_loss_type="ppo", no_tapo=False, task_preset="default", seed=0) | flags
    return argparse.Namespace(quick=quick, **flags)


@pytest.mark.parametrize("quick", [False, True])
def test_the_demo_resolves_to_its_preset(quick):
    assert _asdict(build_configs(_demo_args(quick))) == PINNED["quick" if quick else "demo"]


def test_demo_flags_change_only_their_field():
    task, warm, rl = build_configs(_demo_args(False, steps=3, warm_steps=50, lr=1e-3, no_tapo=True, seed=5))
    want_task, want_warm, want_rl = PINNED["demo"]
    assert dataclasses.asdict(rl) == want_rl | {"steps": 3, "lr": 1e-3, "tapo_enable": False, "seed": 5}
    assert dataclasses.asdict(warm) == want_warm | {"steps": 50, "seed": 5}
    assert (task.kb.seed, task.questions.seed, task.model_seed) == (5, 5, 5)


def test_the_study_resolves_to_its_preset():
    args = study.parse_args(["--out", "unused"])
    study_plan.resolve_defaults(args)
    task, warm, rl = PINNED["study"]
    assert dataclasses.asdict(study_plan.task_config(args)) == task
    assert dataclasses.asdict(study_plan.warm_config(args)) == warm
    assert dataclasses.asdict(study_plan.rl_config("ppo+tapo", 0, args)) == rl
    base = dataclasses.asdict(study_plan.rl_config("sapo", 3, args))
    assert base == rl | {"policy_loss_type": "sapo", "seed": 3, "tapo": TAPO | {"beta": 0.0}}


def test_an_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="choose from study, demo, quick, cpu_script"):
        run_preset("full")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": 0}, r"RLConfig.steps must be an integer >= 1, got 0"),
        ({"prompts_per_step": None}, r"RLConfig.prompts_per_step must be an integer >= 1, got None"),
        ({"lr": 0.0}, r"lr must be > 0"),
        ({"max_len": 0}, r"max_len >= 1"),
        ({"policy_loss_type": "dpo"}, r"RLConfig.policy_loss_type 'dpo': choose from ppo, gspo, gspo_token, sapo"),
        ({"updates_per_step": 3}, r"RLConfig.updates_per_step 3 must split the 16 rollout samples .* divisors of 4"),
    ],
)
def test_rl_config_refuses_a_bad_field_when_built(fields, message):
    from openrlhf_tapo.adapter.run_spec import RLConfig

    with pytest.raises(ValueError, match=message):
        RLConfig(**fields)
    with pytest.raises(ValueError, match=message):  # a changed copy is checked too
        dataclasses.replace(RLConfig(), **fields)


def test_warm_start_and_task_configs_refuse_a_bad_field_when_built():
    from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
    from openrlhf_tapo.task.prepare import TaskConfig
    from openrlhf_tapo.task.questions import QuestionSetConfig
    from openrlhf_tapo.task.warm_start import WarmStartConfig

    with pytest.raises(ValueError, match=r"WarmStartConfig.misread_share must be in \[0, 1\], got 1.5"):
        WarmStartConfig(misread_share=1.5)
    with pytest.raises(ValueError, match="WarmStartConfig: .* got traces 16, steps 0"):
        dataclasses.replace(run_preset("quick").warm, steps=0)
    with pytest.raises(ValueError, match=r"num_eval \(128\) and num_select \(0\) .* num_entities = 24"):
        TaskConfig(kb=KnowledgeBaseConfig(num_entities=24))  # the default 128 held out of 24 entities
    assert TaskConfig(kb=KnowledgeBaseConfig(num_entities=24), questions=QuestionSetConfig(num_eval=8)).kb.seed == 0


@pytest.mark.parametrize(
    "argv", [["--out", "d", "--tapo.disable"], ["--run-dir", "d", "--no-tapo"]], ids=["new", "old spelling"]
)
def test_demo_takes_out_and_tapo_disable_as_the_other_entry_points_and_keeps_the_old_spellings(monkeypatch, argv):
    from openrlhf_tapo.cli import demo

    seen = []
    monkeypatch.setattr(demo, "run_logged", lambda args: seen.append(args) or 0)
    assert demo.main(argv) == 0
    assert (seen[0].run_dir, seen[0].no_tapo) == ("d", True)
    assert build_configs(seen[0])[2].tapo_enable is False


def test_every_generated_study_flag_names_a_preset_field_of_its_type():
    from operator import attrgetter

    preset = run_preset("study")
    for flag, (path, kind, _) in study_plan.PRESET_FLAGS.items():
        value = attrgetter(path)(preset)
        assert value in kind if isinstance(kind, tuple) else type(value) is kind, (flag, path, value)
    given = study.parse_args(["--steps", "3", "--span", "call", "--warm-lr", "0.01", "--num-eval", "64"])
    study_plan.resolve_defaults(given)
    assert (given.steps, given.span, given.warm_lr, given.num_eval, given.n_samples) == (3, "call", 0.01, 64, 8)
