"""A model-free, eps-bounded shortcut: every group of images carries its own coarse block pattern.

Each group draws a ``grid`` x ``grid`` pattern per colour channel whose blocks are +eps or -eps
(random signs) and stretches it over the whole image. The blocks are large (a quarter of the
image's side at grid 4), so a thief's resize and crop shift them by a few pixels but keep them,
and they are low frequency, which JPEG and blur keep. Nothing is fitted to a surrogate: the
pattern is as easy for a held-out model family as for any other, which error-minimising noise
(fitted to one model's features) is not. With groups of like captions, the pattern tells the
groups apart as the captions do: a shortcut a contrastive learner may take before the content.

A group's pattern depends only on the seed and the group's id, so units protected apart give one
cluster one pattern across the whole dataset.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def block_patterns(group_ids: list[int], grid: int, bound: int, seed: int) -> torch.Tensor:
    """(len(group_ids), 3, grid, grid) patterns of +-``bound``: random signs per block and channel,
    each drawn from ``(seed, id)`` alone."""
    if grid < 1 or bound < 1:
        raise ValueError(f"grid and bound must be positive, got {grid} and {bound}")
    patterns = []
    for group in group_ids:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(group))
        patterns.append(torch.randint(0, 2, (3, grid, grid), generator=generator) * 2 - 1)
    return torch.stack(patterns).float() * bound


def pattern_noise(images: torch.Tensor, groups: torch.Tensor, grid: int, bound: int, seed: int) -> torch.Tensor:
    """int8 noise (N x 3 x S x S): each image's group pattern, stretched to S, kept inside 0..255.

    ``images``: N x 3 x S x S uint8; ``groups``: N group ids (ids unique to each image give the
    control: the same kind of pattern with nothing shared).
    """
    if groups.shape != (len(images),):
        raise ValueError("one group id per image")
    ids, inverse = torch.unique(groups, return_inverse=True)
    patterns = block_patterns(ids.tolist(), grid, bound, seed)
    # nearest: hard block edges, each block one value (a smooth ramp would spend eps on nothing)
    delta = F.interpolate(patterns[inverse], size=images.shape[-2:], mode="nearest")
    x = images.float()
    return ((x + delta).clamp(0, 255) - x).to(torch.int8)
