"""HotFlip trigger search: first-order token scores, then a greedy choice by the real loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import clip_loss, group_swap_losses
from .surrogate import ClipModel
from .text import compose, trigger_offsets


class EmbeddingTap:
    """Makes the token embeddings of one forward a leaf tensor, so their gradient can be read."""

    def __init__(self, embedding: torch.nn.Embedding) -> None:
        self.captured: torch.Tensor | None = None
        self._handle = embedding.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output):
        self.captured = output.detach().requires_grad_(True)
        return self.captured

    def close(self) -> None:
        self._handle.remove()


@dataclass(frozen=True)
class Candidates:
    """Where HotFlip looks: the tokens allowed in a trigger (a vocabulary mask), how many of the
    best-scored it tries per position, and how many of those it evaluates at once."""

    allowed: torch.Tensor
    per_position: int
    chunk: int


def hotflip_batch(model: ClipModel, image_features: torch.Tensor, trigger: torch.Tensor, groups: torch.Tensor,
                  body: torch.Tensor, lengths: torch.Tensor, search: Candidates,
                  insert_at: torch.Tensor | None = None) -> tuple[torch.Tensor, float, float]:
    """One greedy left-to-right pass over the trigger positions for one batch.

    ``trigger`` (G x k) holds the triggers of the batch's G groups (a sample, a cluster or
    the whole dataset); ``groups`` (N) maps each sample to its group. Image features are
    computed once by the caller and reused for every candidate. ``insert_at`` (N) places
    each sample's trigger inside its caption (see ``compose``). Returns the new trigger
    and the batch loss before and after; the new trigger's loss is never worse.
    """
    n_groups, k = trigger.shape
    if k == 0:
        return trigger, float("nan"), float("nan")
    ctx = model.context_length
    scale = model.logit_scale().detach()
    embedding = model.token_embedding.weight.detach()
    trigger = trigger.clone()

    starts = 1 + trigger_offsets(lengths, insert_at, k, ctx)                                  # N: first trigger slot
    rows = torch.arange(len(groups), device=groups.device)

    def text_features(trig_per_sample: torch.Tensor) -> torch.Tensor:
        return model.encode_text(compose(trig_per_sample, body, lengths, ctx, insert_at))

    for position in range(k):
        # first-order scores: loss change ~ (e' - e) . grad, so rank tokens by -grad . E
        tap = EmbeddingTap(model.token_embedding)
        try:
            features = text_features(trigger[groups])
            loss = clip_loss(image_features, features, scale)
            grad = torch.autograd.grad(loss, tap.captured)[0][rows, starts + position]      # N x d
        finally:
            tap.close()
        if position == 0:  # later positions start from the accepted proposal, whose features are known
            current, current_loss = features.detach(), loss.item()
            start_loss = current_loss
        group_grad = torch.zeros(n_groups, grad.shape[1], dtype=grad.dtype, device=grad.device)
        group_grad.index_add_(0, groups, grad)
        scores = -(group_grad @ embedding.t().to(grad.dtype))                                 # G x V
        scores[:, ~search.allowed] = -torch.inf
        top = scores.topk(search.per_position, dim=1).indices                                         # G x C

        best_loss = torch.full((n_groups,), current_loss, device=grad.device)
        best_token = trigger[:, position].clone()
        with torch.no_grad():
            for start in range(0, search.per_position, search.chunk):
                chunk = top[:, start : start + search.chunk]                              # G x c
                c = chunk.shape[1]
                trig = trigger[groups].repeat(c, 1)                                          # (c*N) x k
                trig[:, position] = chunk[groups].t().reshape(-1)
                at = None if insert_at is None else insert_at.repeat(c)
                feats = model.encode_text(compose(trig, body.repeat(c, 1), lengths.repeat(c), ctx, at))
                for j, cand in enumerate(feats.split(len(groups))):
                    losses = group_swap_losses(image_features, current, cand, groups, n_groups, scale)
                    better = losses < best_loss
                    best_loss = torch.where(better, losses, best_loss)
                    best_token = torch.where(better, chunk[:, j], best_token)

            proposal = trigger.clone()
            proposal[:, position] = best_token
            proposal_text = text_features(proposal[groups])
            proposal_loss = clip_loss(image_features, proposal_text, scale).item()
            if proposal_loss > current_loss:
                # independent per-group choices interacted badly: keep only the single best swap,
                # whose exact loss is known to be no worse than the current one
                proposal = trigger.clone()
                g = int(best_loss.argmin())
                proposal[g, position] = best_token[g]
                proposal_text = text_features(proposal[groups])
                proposal_loss = clip_loss(image_features, proposal_text, scale).item()
            if proposal_loss <= current_loss:
                trigger, current, current_loss = proposal, proposal_text, proposal_loss
    return trigger, start_loss, current_loss
