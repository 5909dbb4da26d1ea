"""The sizes and settings of a run on the bundled task, defined once: the study's, the demo's, the quick smoke run's
and what examples/scripts/train_tapo_cpu.sh trains without flags. Every other place takes its values from here
(cli/demo.py through demo_stages.build_configs, cli/study.py through study_plan.resolve_defaults; the script's literal
flags are tested equal to `run_preset("cpu_script").rl`, tests/test_launch_scripts.py), and each preset is written
as the study's plus its named differences, so a difference between two entry points is one line here.

tests/test_run_presets.py pins every preset's resolved configuration (dataclasses.asdict) to its values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openrlhf_tapo.adapter.run_spec import RLConfig
    from openrlhf_tapo.task.prepare import TaskConfig
    from openrlhf_tapo.task.warm_start import WarmStartConfig


@dataclass
class RunPreset:
    """One run: the task, the warm start and the RL run (its TAPOConfig is `rl.tapo`)."""

    task: TaskConfig
    warm: WarmStartConfig
    rl: RLConfig


RUN_PRESETS = ("study", "demo", "quick", "cpu_script")


def run_preset(name: str, seed: int = 0) -> RunPreset:
    """A fresh copy of preset `name` (the configs are mutable), every seed (knowledge base, questions, model, warm
    start, RL) set to `seed`.

    study: 512 entities, 128 held out; the warm start's defaults; GRPO groups of 8 from 8 prompts per step, 12 steps
    (docs/results.md). demo: the study's RL settings on shorter sequences (max_len 512: the demo's 8-minute budget)
    with 64 held-out questions and 100 content steps fewer in the warm start (docs/demo.md, "Choosing the RL
    settings"). quick: the CI tests' sizes, a smoke run of every stage. cpu_script: the quick RL run as the Ray
    script writes it (lr 1e-3, max_len 1024, OpenRLHF's default seed 42; MAX_SAMPLES=4 prompts: 2 steps of 2)."""
    from openrlhf_tapo.adapter.run_spec import RLConfig
    from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
    from openrlhf_tapo.task.prepare import TaskConfig
    from openrlhf_tapo.task.questions import QuestionSetConfig
    from openrlhf_tapo.task.warm_start import WarmStartConfig

    if name not in RUN_PRESETS:
        raise ValueError(f"run preset {name!r}: choose from {', '.join(RUN_PRESETS)}")

    def task(num_entities: int, num_eval: int) -> TaskConfig:
        kb = KnowledgeBaseConfig(num_entities=num_entities, seed=seed)
        return TaskConfig(kb=kb, questions=QuestionSetConfig(num_eval=num_eval, seed=seed), model_seed=seed)

    study = RunPreset(
        task=task(512, 128),
        warm=WarmStartConfig(seed=seed),
        rl=RLConfig(steps=12, prompts_per_step=8, n_samples_per_prompt=8, micro_batch_size=8, max_len=1536, seed=seed),
    )
    if name == "study":
        return study
    if name == "demo":
        # 100 content steps fewer than the study's warm start (the reading is learned by ~step 270), which pays for
        # 4 more RL steps in the demo's 8 minutes; paired over 4 RL seeds on 2026-12-06: +0.101 [+0.053, +0.149]
        # (docs/demo_gain_2026-12-06). The learning rate is the study's: 1e-3 gained less, 2e-3 collapsed.
        warm = dataclasses.replace(study.warm, steps=400, content_steps=300)
        return RunPreset(
            task(512, 64),
            warm,  # 64 held-out questions: issue 12 asks >= 64
            dataclasses.replace(study.rl, max_len=512),
        )
    # whole turns from the start (no content phase): enough for a smoke run to write calls that reach the tools
    warm = WarmStartConfig(traces=16, steps=100, content_steps=0, batch_size=4, lr=5e-3, warmup_steps=2, seed=seed)
    quick = RLConfig(steps=2, prompts_per_step=2, n_samples_per_prompt=4, micro_batch_size=4, max_len=512, seed=seed)
    if name == "quick":
        return RunPreset(task(24, 8), warm, quick)
    return RunPreset(task(24, 8), warm, dataclasses.replace(quick, lr=1e-3, max_len=1024, seed=42))
