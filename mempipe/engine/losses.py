"""The symmetric CLIP InfoNCE loss and its 'swap one group of texts' variant for HotFlip."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    logits = scale * image_features @ text_features.t()
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def group_swap_losses(image_features: torch.Tensor, current_text: torch.Tensor, candidate_text: torch.Tensor,
                      groups: torch.Tensor, n_groups: int, scale: torch.Tensor | float) -> torch.Tensor:
    """Batch loss when only group g's texts take their candidate, for every g at once: (n_groups,).

    Exact (every other text keeps its current features), so per-group choices are
    judged by the real contrastive loss, not by a per-sample approximation. Swapping group
    g replaces the columns of its members in the N x N logits, so two logit matrices (current
    and candidate texts) and per-group sums over columns give every swap's loss in
    O(N^2 (d + G)) instead of building G logit matrices.
    """
    n = len(image_features)
    member = (groups[None, :] == torch.arange(n_groups, device=groups.device)[:, None]).double()  # G x N
    # float64: logits span up to 2 x scale = 200 nats, whose exp underflows float32
    current = scale * image_features.double() @ current_text.double().t()                 # image n x text m
    candidate = scale * image_features.double() @ candidate_text.double().t()
    # image -> text: row n's softmax over texts, with group g's columns taken from the candidate
    top = torch.maximum(current.max(dim=1).values, candidate.max(dim=1).values)[:, None]
    row_sums = (current - top).exp() @ (1 - member).t() + (candidate - top).exp() @ member.t()   # N x G
    target = torch.where(member.t().bool(), candidate.diagonal()[:, None], current.diagonal()[:, None])
    i2t = (row_sums.log() + top - target).mean(dim=0)
    # text -> image: each column's softmax over images is its own; a swap replaces its members' columns
    t2i_current = current.logsumexp(dim=0) - current.diagonal()
    t2i_candidate = candidate.logsumexp(dim=0) - candidate.diagonal()
    t2i = ((1 - member) @ t2i_current + member @ t2i_candidate) / n
    return ((i2t + t2i) / 2).to(image_features.dtype)
