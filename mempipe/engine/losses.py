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
    judged by the real contrastive loss, not by a per-sample approximation.
    """
    n = len(image_features)
    member = groups[None, :] == torch.arange(n_groups, device=groups.device)[:, None]        # G x N
    texts = torch.where(member[..., None], candidate_text[None], current_text[None])        # G x N x d
    logits = scale * torch.einsum("nd,gmd->gnm", image_features, texts)                     # G x N x N
    diag = torch.arange(n, device=logits.device)
    i2t = -(logits.log_softmax(dim=2)[:, diag, diag]).mean(dim=1)
    t2i = -(logits.log_softmax(dim=1)[:, diag, diag]).mean(dim=1)
    return (i2t + t2i) / 2
