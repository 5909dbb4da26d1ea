"""OpenRLHF 0.11.2's own argument parser and validation, callable without starting training.

OpenRLHF defines its PPO parser inline under `if __name__ == "__main__":` in `openrlhf/cli/train_ppo_ray.py`, so it
cannot be imported. We execute that module as `__main__` with `get_strategy` (the first thing `train()` does after
Ray init) replaced by a function that hands the parsed, validated args back, and with `ray.is_initialized`
answering True so no Ray cluster starts. Everything the parser and its validation block do runs as written.
"""

import contextlib
import runpy
import sys
from unittest import mock

OPENRLHF_PPO_MODULE = "openrlhf.cli.train_ppo_ray"
# OpenRLHF's parser accepts `--actor.policy_loss_type` ppo | gspo only: each of our losses is parsed as the nearest
# of those (so OpenRLHF's own validation of that type applies) and set on the args after parsing.
OPENRLHF_LOSS_TYPE = {"ppo": "ppo", "gspo": "gspo", "gspo_token": "gspo", "sapo": "ppo"}


class _ParsedArgs(Exception):
    def __init__(self, args):
        super().__init__("parsed")
        self.parsed = args


def _capture(args):
    raise _ParsedArgs(args)


def parse_openrlhf_args(argv: list[str]):
    """Return the hierarchical args OpenRLHF 0.11.2 would train with for `argv` (flags only, no program name).

    Raises SystemExit (argparse) for an unknown or ill-typed flag and AssertionError/ValueError for a configuration
    OpenRLHF's own validation block rejects, exactly as `python -m openrlhf.cli.train_ppo_ray` would.
    """
    import openrlhf.utils
    import ray

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(sys, "argv", [OPENRLHF_PPO_MODULE, *argv]))
        stack.enter_context(mock.patch.object(openrlhf.utils, "get_strategy", _capture))
        stack.enter_context(mock.patch.object(ray, "is_initialized", lambda: True))
        try:
            runpy.run_module(OPENRLHF_PPO_MODULE, run_name="__main__", alter_sys=False)
        except _ParsedArgs as parsed:
            return parsed.parsed
    raise RuntimeError(f"{OPENRLHF_PPO_MODULE} finished without calling train(); OpenRLHF's CLI has changed")
