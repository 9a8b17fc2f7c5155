"""Victim CLIP training and retrieval metrics (pure PyTorch, tensors in and out).

This is what a data thief would do with the protected shards: train a CLIP on them from
scratch, or fine-tune a public pretrained one (``init``), with AdamW, warm-up + cosine and
CLIP's clamped temperature, optionally with augmentation, and use it for retrieval on real
(clean) data. Test sets are scored before the first step too (``zero_shot``: for a
pretrained start), so a fine-tune reports its gain.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.losses import clip_loss
from ..engine.surrogate import ClipModel, build_model
from ..engine.text import compose, encode_captions


@dataclass(frozen=True)
class VictimConfig:
    arch: str = "tiny-resnet"
    image_size: int = 64
    context_length: int = 32
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_epochs: float = 1.0
    random_crop: bool = False        # random-resized-crop augmentation (a thief's countermeasure)
    seed: int = 0
    init: str | None = None          # an open_clip checkpoint to fine-tune (a public pretrained CLIP)
    model_config: str | None = None  # its open_clip model-config JSON (sizes are read from it)


@dataclass
class VictimRun:
    loss_curve: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    zero_shot: dict = field(default_factory=dict)   # test metrics before the first step
    model: object = None                            # the trained model (keep_model=True)


def tokens_for(captions: list[str], context_length: int) -> torch.Tensor:
    body, lengths = encode_captions(captions, context_length - 2)
    return compose(torch.zeros(len(captions), 0, dtype=torch.long), body, lengths, context_length)


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor) -> dict:
    """i2t and t2i R@1/5/10 (percent) and median rank, for n paired test items."""
    sim = image_features @ text_features.t()
    out: dict = {}
    for name, s in (("i2t", sim), ("t2i", sim.t())):
        correct = s.diagonal()[:, None]
        # ties are broken at random, in expectation: a collapsed encoder (every image alike)
        # must score chance, not rank every caption first
        above = (s > correct).sum(dim=1).float()
        tied = (s == correct).sum(dim=1).float()                 # the item itself included
        for k in (1, 5, 10):
            hit = ((k - above) / tied).clamp(0, 1)
            out[f"{name}_R@{k}"] = round(100.0 * hit.mean().item(), 2)
        out[f"{name}_median_rank"] = float((above + (tied + 1) / 2).median().item())
    n = len(sim)
    out["chance_R@10"] = round(100.0 * min(10, n) / n, 2)
    return out


def _random_resized_crop(images: torch.Tensor, generator: torch.Generator, scale=(0.35, 1.0)) -> torch.Tensor:
    """Per-image random-resized crops (and flips) of a uint8 batch, back at the same size."""
    n, _, h, w = images.shape
    out = torch.empty(n, 3, h, w)
    for i in range(n):
        area = float(torch.empty(1).uniform_(*scale, generator=generator)) * h * w
        ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)))
        ch = max(8, min(h, int(round(math.sqrt(area / ratio)))))
        cw = max(8, min(w, int(round(math.sqrt(area * ratio)))))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        crop = images[i : i + 1, :, top : top + ch, left : left + cw].float()
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        if torch.rand(1, generator=generator) < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0]
    return out


@torch.no_grad()
def embed(model, images: torch.Tensor, tokens: torch.Tensor, device, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    img = torch.cat([model.encode_image(images[i : i + batch].to(device).float() / 255) for i in range(0, len(images), batch)])
    txt = torch.cat([model.encode_text(tokens[i : i + batch].to(device)) for i in range(0, len(tokens), batch)])
    return img.float().cpu(), txt.float().cpu()


def train_victim(train_images: torch.Tensor, train_captions: list[str], cfg: VictimConfig,
                 tests: dict[str, tuple[torch.Tensor, list[str]]], device: str | torch.device = "cpu",
                 progress: Callable[[dict], None] | None = None, keep_model: bool = False,
                 after_epoch: Callable[[int, ClipModel], None] | None = None) -> VictimRun:
    """Train from scratch; evaluate every test set after each epoch. Images: N x 3 x S x S uint8."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(cfg.arch, cfg.image_size, cfg.context_length, checkpoint=cfg.init, seed=cfg.seed,
                        model_config=cfg.model_config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train_images)
    steps_per_epoch = max(1, n // cfg.batch_size)  # drop the ragged last batch, as CLIP trainers do
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    tokens = tokens_for(train_captions, cfg.context_length)
    test_tokens = {name: (imgs, tokens_for(caps, cfg.context_length)) for name, (imgs, caps) in tests.items()}
    run = VictimRun(zero_shot={name: retrieval_metrics(*embed(model, imgs, toks, device))
                               for name, (imgs, toks) in test_tokens.items()})
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            batch = train_images[idx]
            x = _random_resized_crop(batch, generator) if cfg.random_crop else batch.float()
            loss = clip_loss(model.encode_image(x.to(device) / 255), model.encode_text(tokens[idx].to(device)),
                             model.logit_scale())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.item())
        entry = {"epoch": epoch + 1, "train_loss": round(float(np.mean(losses)), 4)}
        for name, (imgs, toks) in test_tokens.items():
            entry[name] = retrieval_metrics(*embed(model, imgs, toks, device))
        run.loss_curve.append(entry["train_loss"])
        run.epochs.append(entry)
        if progress:
            progress(entry)
        if after_epoch:   # e.g. saving checkpoints along the fine-tune (a self-ensemble's members)
            after_epoch(epoch + 1, model)
    if keep_model:
        run.model = model.cpu().eval()
    return run
