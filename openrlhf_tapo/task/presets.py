"""Named presets of the bundled task: "default" (the task every result before issue 21 was measured on) and
"recall_cost", the regime where GRPO can suppress a useful tool.

In recall_cost some organisations are known to the policy after the warm start (their city is recalled from the
name the question now gives, `questions.NAMED_QUESTION`), the rest can only be answered by searching, and the reward
charges for searching in MMSearch-R1's form (a correct answer after a search earns 1 - search_penalty, a correct
direct answer 1). Whether GRPO then drops calls that would pay, and whether a direct answer is a recall rather than a
guess, are its gates (task/gates.py: `collapse_gate`, `recall_share`), measured before any comparison on it.

Torch-free, so the command lines can list the presets before they import the libraries that print.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RecallCostConfig:
    """The `recall_cost` preset: the regime where GRPO can suppress a useful tool (issue 21).

    known_share: share of each split's organisations the policy knows after the warm start (RECALL questions,
    `questions.known_indices`); the warm start teaches their cities by direct answers (`WarmStartConfig.
    known_search_share` of their traces search anyway), including those of the held-out splits, which RL never sees.
    search_penalty: MMSearch-R1's search cost in the reward (agent.yaml's `reward.search_penalty`): a correct answer
    after a search earns 1 - search_penalty, a correct direct answer 1 (exact match, no format term).
    The defaults are a starting point to measure the gates from (docs/evaluation.md), not a measured setting.
    """

    known_share: float = 0.5
    search_penalty: float = 0.1

    def __post_init__(self) -> None:
        for name in ("known_share", "search_penalty"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"recall_cost {name} must be in [0, 1], got {getattr(self, name)}")


# name -> the task variant (`TaskConfig.recall_cost`); "default" is the task every result so far was measured on
TASK_PRESETS: dict[str, RecallCostConfig | None] = {"default": None, "recall_cost": RecallCostConfig()}


def preset_variant(name: str, **overrides) -> RecallCostConfig | None:
    """The `TaskConfig.recall_cost` of preset `name` with `overrides` (the knobs given on a command line, None =
    the preset's own). Raises ValueError naming the presets, or naming a knob the default task has not."""
    if name not in TASK_PRESETS:
        raise ValueError(f"--task-preset {name!r}: unknown; choose from {', '.join(TASK_PRESETS)}")
    variant, given = TASK_PRESETS[name], {k: v for k, v in overrides.items() if v is not None}
    if variant is None:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ValueError(f"{flags}: only the recall_cost preset has these knobs; add --task-preset recall_cost")
        return None
    return replace(variant, **given)  # validated by RecallCostConfig.__post_init__
