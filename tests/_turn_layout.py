"""The toy token layout the step-credit tests share: turn k of a trajectory covers columns [4k, 4k + 2) of a
WIDTH-column batch; columns 4k + 2 and 4k + 3 play the masked tool response."""

import torch

WIDTH = 12


def turn_mask(counts: list[int]):
    """Action mask [len(counts), WIDTH] of trajectories with `counts[i]` turns each."""
    mask = torch.zeros(len(counts), WIDTH, dtype=torch.bool)
    for row, count in enumerate(counts):
        for k in range(count):
            mask[row, 4 * k : 4 * k + 2] = True
    return mask
