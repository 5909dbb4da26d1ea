"""The one YAML loader of our configuration files (agent YAML, `--tapo.config`), and the one unknown-key check.

Every error is a `ConfigError` (a ValueError) that names the file (or the mapping's place in it) and what to do:
a missing file, YAML that does not parse, a top level that is not a mapping, a key no option of ours has (with the
known keys, so that a typo never falls back to a default in silence).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or mapping we cannot use; the message names it."""


def load_yaml_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The mapping at the top level of the YAML file `path` ({} for an empty file). `what` names the file's role in
    the messages (e.g. "--tapo.config", "agent config (from $OPENRLHF_TAPO_AGENT_CONFIG)")."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} {file}: no such file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {file}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {file}: expected a mapping at top level, got {type(data).__name__}")
    return data


def check_keys(data: Mapping, known: Iterable[str], where: str) -> None:
    """Raise ConfigError naming every key of `data` not in `known`, and the known ones."""
    known = sorted(known)
    unknown = sorted(str(key) for key in set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
