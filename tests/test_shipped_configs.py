"""Shipped YAML files carry only what differs from the defaults: each default is defined once, in its dataclass.

A shipped file that repeats a default would be a second definition of it, which drifts when the dataclass changes.
"""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from openrlhf_tapo.agent.config import AgentConfig, load_agent_config
from openrlhf_tapo.algorithms.policy_loss import PolicyLossConfig
from openrlhf_tapo.algorithms.tapo import TAPOConfig
from openrlhf_tapo.cli.train_ppo_ray import build_parser
from openrlhf_tapo.utils.config_files import load_yaml_mapping

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(path.relative_to(REPO) for path in (*REPO.glob("configs/*.y*ml"), *REPO.glob("examples/**/*.y*ml")))


def _defaults_of_flags():
    """The defaults of our --tapo.config sections, as the launcher has them (its flags say what is ours)."""
    flags = {action.dest for action in build_parser()._actions}
    actor = PolicyLossConfig()
    return SimpleNamespace(
        tapo=SimpleNamespace(enable=False, **vars(TAPOConfig())),
        actor=SimpleNamespace(
            policy_loss_type="ppo", **{k: getattr(actor, k) for k in ("sapo_tau_pos", "sapo_tau_neg")}
        ),
        agent=SimpleNamespace(config=None),
    ), flags


def repeated_defaults(data: dict, defaults, where: str = "") -> list[str]:
    """Keys of `data` whose value is the default of the same field of `defaults` (nested mappings and dataclasses
    compared key by key)."""
    repeated = []
    for key, value in data.items():
        default = getattr(defaults, key)
        name = f"{where}{key}"
        if isinstance(value, dict) and isinstance(default, dict):
            repeated += [f"{name}.{k}" for k, v in value.items() if k in default and default[k] == v]
        elif isinstance(value, dict) and (dataclasses.is_dataclass(default) or isinstance(default, SimpleNamespace)):
            repeated += repeated_defaults(value, default, f"{name}.")
        elif value == default or (isinstance(default, tuple) and isinstance(value, list) and tuple(value) == default):
            repeated.append(name)
    return repeated


def shipped_repeats(path: Path) -> list[str]:
    data = load_yaml_mapping(path, "shipped config")
    if "tapo" in data or "actor" in data:  # a --tapo.config file
        defaults, flags = _defaults_of_flags()
        assert {f"{s}.{k}" for s, keys in data.items() for k in keys} <= flags, f"{path}: keys that are no flag"
        return repeated_defaults(data, defaults)
    load_agent_config(path)  # an agent YAML: it must load
    return repeated_defaults(data.get("agent", data), AgentConfig())


@pytest.mark.parametrize("path", SHIPPED, ids=str)
def test_a_shipped_yaml_repeats_no_default(path):
    assert shipped_repeats(REPO / path) == [], f"{path} restates defaults defined in the dataclasses"


def test_the_shipped_files_are_found():
    assert {"configs/tapo.yaml", "configs/agent.yaml"} <= {str(path) for path in SHIPPED}


@pytest.mark.parametrize(
    ("text", "repeated"),
    [
        ("tapo: {enable: true, beta: 0.8}\n", ["tapo.beta"]),
        ("tapo: {enable: true, similarity: {zoom: bbox_iou, text_search: text_exact}}\n", ["tapo.similarity.zoom"]),
        ("tapo: {enable: false}\nactor: {policy_loss_type: sapo, sapo_tau_neg: 1.05}\n",
         ["tapo.enable", "actor.sapo_tau_neg"]),
        ("max_turns: 5\ntools: {backend: {kind: local, index_dir: /i}, text_search: {top_k: 5}}\n",
         ["max_turns", "tools.backend.kind", "tools.text_search.top_k"]),
        ("agent: {reward: {judge: {mode: fallback}}, stop: ['</tool_call>', '</answer>']}\n",
         ["reward.judge.mode", "stop"]),
        ("tapo: {enable: true, beta: 0.5}\nagent: {config: configs/agent.yaml}\n", []),
    ],
)  # fmt: skip
def test_the_check_rejects_a_repeated_default(tmp_path, text, repeated):
    path = tmp_path / "shipped.yaml"
    path.write_text(text)
    assert shipped_repeats(path) == repeated
