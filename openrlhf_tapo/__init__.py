"""openrlhf_tapo: Tool-Aware Policy Optimization (TAPO) and multimodal search agents on OpenRLHF 0.11.2."""

__version__ = "0.1.0"
