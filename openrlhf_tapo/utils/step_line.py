"""One RL step in a few numbers, the same line wherever a step is shown: the in-process loop's log and the demo's and
the study's progress bars, and the Ray run's steps (read from OpenRLHF's log line or its tensorboard)."""

from __future__ import annotations

NAN = float("nan")


def step_line(status: dict) -> str:
    """`reward 0.38, acc 0.25, tool calls 1.50, TAPO corrected 2, loss -0.0123, vllm_kl -7.2e-05` from a step's
    metrics. OpenRLHF's Ray trainer logs the agent's accuracy and tool calls bare (`score`, `tool_calls`), the
    in-process loop under our names; the loss and vllm_kl are shown when the step has them."""
    parts = [
        f"reward {status.get('rollout/reward_mean', NAN):.2f}",
        f"acc {status.get('accuracy', status.get('score', NAN)):.2f}",
        f"tool calls {status.get('agent/tool_calls', status.get('tool_calls', NAN)):.2f}",
        f"TAPO corrected {status.get('tapo/corrected_calls', 0):.0f}",
    ]
    if "policy_loss" in status:
        parts.append(f"loss {status['policy_loss']:.4f}")
    if "vllm_kl" in status:
        parts.append(f"vllm_kl {status['vllm_kl']:.1e}")
    return ", ".join(parts)
