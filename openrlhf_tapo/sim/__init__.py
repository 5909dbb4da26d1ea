"""A controlled tool-use environment and group-RL trainer that isolate TAPO's mechanism (docs/results.md §1).

`env` defines part 1's one-call environment, its regimes and its exact ground truth; `multicall` part 2's
environments with two calls per trajectory (two hops, state-dependent call value, a redundant repeat); `train` runs
GRPO / SAPO / GSPO-token with and without TAPO on a tabular policy, many seeds at once, with SGD, Adam or AdamW;
`study` / `multicall_study` fix each part's grid and `report` / `multicall_report` write its report.
Advantages come from the caller (the CLI passes OpenRLHF's own group_norm) and TAPO is
`algorithms.tapo.tapo_correct`: the simulation has no copy of either.
"""
