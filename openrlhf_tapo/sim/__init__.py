"""A controlled tool-use environment and group-RL trainer that isolate TAPO's mechanism (docs/results.md §1).

`env` defines the environment, its regimes and its exact ground truth; `train` runs GRPO / SAPO / GSPO-token with
and without TAPO on a tabular policy, many seeds at once. Advantages come from the caller (the CLI passes
OpenRLHF's own group_norm) and TAPO is `algorithms.tapo.tapo_correct`: the simulation has no copy of either.
"""
