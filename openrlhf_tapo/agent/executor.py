"""The file to name in `--train.agent_func_path`: `openrlhf_tapo/agent/executor.py`.

OpenRLHF loads it with `importlib.util.spec_from_file_location("agent_module", path)` without registering the module
in `sys.modules`, so anything defined here would live in a module that cannot be imported again by name (dataclasses
with postponed annotations and pickling both look the module up, and fail). The executor therefore lives in the
importable `openrlhf_tapo.agent.rollout`; this file only re-exports it, with an absolute import.
"""

from openrlhf_tapo.agent.rollout import ERROR_KINDS, AgentExecutor

__all__ = ["AgentExecutor", "ERROR_KINDS"]
