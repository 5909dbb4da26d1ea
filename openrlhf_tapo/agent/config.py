"""Typed configuration of the search agent (turn and token limits, tools, reward), loaded from YAML.

Inside OpenRLHF's vLLM rollout actors the executor is built with no arguments, so it finds its YAML through the
environment variable `OPENRLHF_TAPO_AGENT_CONFIG` (our CLI sets it through Ray's runtime_env). Unknown keys are
errors that name the key and the known ones, never silently ignored. `configs/agent.yaml` is the documented
default; with no file at all, `AgentConfig()` is used (its tools need a backend: see `tools.backend`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from openrlhf_tapo.agent.protocol import STOP_STRINGS
from openrlhf_tapo.tools.config import ToolsConfig
from openrlhf_tapo.utils.config_files import check_keys, load_yaml_mapping

CONFIG_ENV = "OPENRLHF_TAPO_AGENT_CONFIG"
# The dtype the trainer computes in, exported by our launcher to every Ray worker (adapter/seam/inject.py): the agent's
# default `mm_dtype`.
MM_DTYPE_ENV = "OPENRLHF_TAPO_MM_DTYPE"
MM_DTYPES = ("bfloat16", "float16", "float32")

MATCH_MODES = ("exact", "substring", "f1")
JUDGE_MODES = ("fallback", "always")
PROMPT_CHECKS = ("count", "raise", "off")


@dataclass
class JudgeConfig:
    """Optional LLM judge through any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, OpenAI, ...)."""

    url: str = ""  # base URL, e.g. "http://127.0.0.1:8001/v1" ("/chat/completions" is appended); "" = no judge
    model: str = ""  # model name sent in the request
    api_key_env: str | None = None  # environment variable holding the bearer key (never the key itself)
    mode: str = "fallback"  # "fallback": ask only when the rule-based match says wrong; "always": judge decides
    timeout_s: float = 30.0  # per request
    attempts: int = 3  # tries per answer (HTTP error, timeout, unreadable verdict); then the rule-based result
    max_concurrency: int = 16  # concurrent judge requests per rollout actor

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass
class RewardConfig:
    """reward = accuracy_weight * correct * P + format_weight * format_ok, with P = 1 - search_penalty when the
    answer is correct and a search tool was used (else 1). The defaults are MMSearch-R1's scheme (0.9, 0.1, P=0.9).
    `score` (what OpenRLHF logs and filters on) is `correct`, in 0-1."""

    preset: str | None = None  # "mmsearch_r1" | "exact_match" | "f1": a named set of the values below (file keys win)
    match: str = "exact"  # what counts as correct: "exact" (normalised EM), "substring" (either way), "f1" (token F1)
    use_candidates: bool = True  # candidate answers (aliases) count as the ground truth does
    accuracy_weight: float = 0.9
    format_weight: float = 0.1
    search_penalty: float = 0.1
    search_tools: list[str] = field(default_factory=lambda: ["image_search", "text_search"])  # tools penalised
    judge: JudgeConfig = field(default_factory=JudgeConfig)


REWARD_PRESETS: dict[str, dict[str, Any]] = {
    "mmsearch_r1": dict(match="exact", accuracy_weight=0.9, format_weight=0.1, search_penalty=0.1),
    "exact_match": dict(match="exact", accuracy_weight=1.0, format_weight=0.0, search_penalty=0.0),
    "f1": dict(match="f1", accuracy_weight=1.0, format_weight=0.0, search_penalty=0.0),
}


@dataclass
class AgentConfig:
    tools: ToolsConfig = field(default_factory=ToolsConfig)  # tools, backend, cache, observation and image limits
    max_turns: int = 5  # assistant turns per trajectory (the last one must answer)
    max_tokens_per_turn: int = 1024  # generation limit of one assistant turn (capped by what max_length leaves)
    min_tokens_per_turn: int = 16  # a turn is not started with less room than this: the trajectory ends truncated
    stop: list[str] = field(default_factory=lambda: list(STOP_STRINGS))  # added to the sampling params' own stops
    instructions: str | None = None  # system-prompt instructions before the tools block; None = protocol default
    # False: no JSON-schema tools block, the system prompt is `instructions` alone (which must then describe the
    # tools): a compact prompt for small models, whose context a ~500-token schema block would dominate.
    tools_block: bool = True
    last_turn_notice: str = "This was your last tool call: answer now inside <answer></answer>."  # "" = none
    reward: RewardConfig = field(default_factory=RewardConfig)
    # dtype of the floating-point multimodal tensors (pixel_values) returned for training: "bfloat16", "float16" or
    # "float32". None = $OPENRLHF_TAPO_MM_DTYPE, which our launcher sets to the trainer's compute dtype (bfloat16 with
    # OpenRLHF's default --ds.param_dtype bf16, float32 under the CPU profile), else float32 as the processor returns
    # them. The vision tower casts its input to its own dtype, so the trainer's dtype is lossless and half the bytes
    # that cross Ray's object store.
    mm_dtype: str | None = None
    # Each turn, the prompt length the engine reports (vLLM expands the image pads with its own processor) must equal
    # the trajectory's tokens, or rollout and training positions differ. "count": log it under errors/prompt_length
    # and go on; "raise": fail the rollout at once (debugging, the GPU smoke); "off".
    prompt_check: str = "count"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AgentConfig:
        data = dict(data or {})
        tools = ToolsConfig.from_dict(data.pop("tools", None))
        reward = dict(data.pop("reward", None) or {})
        preset = reward.get("preset")
        if preset is not None:
            if preset not in REWARD_PRESETS:
                raise ValueError(f"reward.preset: unknown preset {preset!r} (known: {', '.join(REWARD_PRESETS)})")
            reward = {**REWARD_PRESETS[preset], **reward}
        judge = _build(JudgeConfig, reward.pop("judge", None) or {}, "reward.judge")
        reward_cfg = _build(RewardConfig, {**reward, "judge": judge}, "reward")
        config = _build(cls, {**data, "tools": tools, "reward": reward_cfg}, "agent")
        config.validate()
        return config

    def validate(self) -> None:
        positive = ("max_turns", "max_tokens_per_turn", "min_tokens_per_turn")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"agent.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.tools_block, bool):
            raise ValueError(f"agent.tools_block must be true or false, got {self.tools_block!r}")
        if self.prompt_check not in PROMPT_CHECKS:
            raise ValueError(
                f"agent.prompt_check must be one of {', '.join(PROMPT_CHECKS)}, got {self.prompt_check!r}"
            )
        if self.mm_dtype is not None and self.mm_dtype not in MM_DTYPES:
            raise ValueError(f"agent.mm_dtype must be one of {', '.join(MM_DTYPES)} or unset, got {self.mm_dtype!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"agent.stop must be a list of non-empty strings, got {self.stop!r}")
        r = self.reward
        if r.match not in MATCH_MODES:
            raise ValueError(f"reward.match must be one of {', '.join(MATCH_MODES)}, got {r.match!r}")
        for name in ("accuracy_weight", "format_weight", "search_penalty"):
            value = getattr(r, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"reward.{name} must be a number in [0, 1], got {value!r}")
        if r.accuracy_weight + r.format_weight > 1 + 1e-9:
            raise ValueError("reward.accuracy_weight + reward.format_weight must be <= 1 (rewards are in 0-1)")
        if r.judge.mode not in JUDGE_MODES:
            raise ValueError(f"reward.judge.mode must be one of {', '.join(JUDGE_MODES)}, got {r.judge.mode!r}")
        if r.judge.enabled and not r.judge.model:
            raise ValueError("reward.judge.model is required when reward.judge.url is set")


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    check_keys(data, (f.name for f in dataclasses.fields(cls)), where)
    return cls(**data)


def load_agent_config(path: str | os.PathLike | None = None) -> AgentConfig:
    """The agent configuration from `path`, else from the file named by $OPENRLHF_TAPO_AGENT_CONFIG, else defaults;
    an unset `mm_dtype` is taken from $OPENRLHF_TAPO_MM_DTYPE.

    A YAML file holds either the agent keys at top level or under an `agent:` key (so one file can also carry
    other sections).
    """
    what = "agent config" if path else f"agent config (from ${CONFIG_ENV})"
    path = path or os.environ.get(CONFIG_ENV)
    data = load_yaml_mapping(path, what) if path else {}
    if "agent" in data and isinstance(data["agent"], dict):
        data = data["agent"]
    where = f"{what} {path}" if path else "agent config"
    if data.get("mm_dtype") is None and os.environ.get(MM_DTYPE_ENV):
        data = {**data, "mm_dtype": os.environ[MM_DTYPE_ENV]}
        where += f" (mm_dtype from ${MM_DTYPE_ENV})"
    try:
        return AgentConfig.from_dict(data)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
