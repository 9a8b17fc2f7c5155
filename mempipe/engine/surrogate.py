"""CLIP models for surrogates and victims, built with open_clip.

Any open_clip architecture by name (RN50, ViT-B-32, ...) from scratch or from a local
checkpoint file, plus tiny configurations that train on a CPU. ``ClipModel`` adds
CLIP's pixel normalisation so that callers work in [0, 1] pixel space, where the
L-inf budget lives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

import open_clip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _text_cfg(context_length: int, width: int, layers: int, heads: int = 2) -> CLIPTextCfg:
    return CLIPTextCfg(context_length=context_length, vocab_size=49408, width=width, heads=heads, layers=layers)


TINY_CONFIGS = {
    # small ViT: 8 px patches, 3 blocks of width 96 (the cpu-tiny surrogate)
    "tiny-vit": lambda size, ctx: dict(embed_dim=96, text_cfg=_text_cfg(ctx, 96, 2),
                                       vision_cfg=CLIPVisionCfg(layers=3, width=96, head_width=48, patch_size=8,
                                                                image_size=size, mlp_ratio=2.0)),
    # a wider ViT victim: 8 px patches, 4 blocks of width 128
    "small-vit": lambda size, ctx: dict(embed_dim=128, text_cfg=_text_cfg(ctx, 128, 3),
                                        vision_cfg=CLIPVisionCfg(layers=4, width=128, head_width=64, patch_size=8,
                                                                 image_size=size, mlp_ratio=2.0)),
    # small ResNet: open_clip's ModifiedResNet (attention pooling) with one block per stage
    "tiny-resnet": lambda size, ctx: dict(embed_dim=128, text_cfg=_text_cfg(ctx, 128, 3),
                                          vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, head_width=32,
                                                                   image_size=size)),
}


class ClipModel(nn.Module):
    """An open_clip CLIP that takes images in [0, 1] and returns normalised features."""

    def __init__(self, clip: nn.Module, context_length: int) -> None:
        super().__init__()
        self.clip = clip
        self.context_length = context_length
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.clip.token_embedding

    def encode_image(self, images01: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image((images01 - self.mean) / self.std), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        # CLIP clamps the learned temperature at 100
        return self.clip.logit_scale.exp().clamp(max=100.0)


def build_model(arch: str, image_size: int, context_length: int, checkpoint: str | None = None,
                seed: int | None = None) -> ClipModel:
    """A CLIP from scratch (seeded), or loaded from a local open_clip checkpoint file."""
    if seed is not None:
        torch.manual_seed(seed)
    if arch in TINY_CONFIGS:
        clip = CLIP(**TINY_CONFIGS[arch](image_size, context_length))
        if checkpoint:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            clip.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    else:
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown architecture {arch!r}: an open_clip model name or one of {sorted(TINY_CONFIGS)}")
        # a checkpoint must have been trained at these sizes (224 px / 77 tokens for released weights)
        clip = open_clip.create_model(arch, pretrained=checkpoint, force_image_size=image_size,
                                      force_context_length=context_length)
    return ClipModel(clip, context_length)


def save_checkpoint(model: ClipModel, path: str) -> None:
    """Save in the open_clip checkpoint format (a ``state_dict`` entry)."""
    torch.save({"state_dict": model.clip.state_dict()}, path)
