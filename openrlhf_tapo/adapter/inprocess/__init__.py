"""The in-process driver: OpenRLHF's own training classes in one CPU process (no Ray, no vLLM, no DeepSpeed engine);
loop.py's `InProcessRL.step` is one RL step, top to bottom."""
