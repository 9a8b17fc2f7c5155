"""What a trainer does to a stored image before its model sees it, as differentiable tensor ops.

The noise lives at the stored resolution (``noise_size``); every model sees the image through a
view: a resize to its input size (what an evaluation transform does), or, inside PGD, a model
of a thief's training transform: a random resized crop (scale and aspect ranges as torchvision's
``RandomResizedCrop``, antialiased bicubic as PIL resizes), a horizontal flip, and with given
probabilities a differentiable JPEG (kornia) and grayscale. PGD then minimises the loss in
expectation over these views, so the noise cannot rely on one pixel grid.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TRANSFORMS = ("resize", "crop")
JPEG_QUALITY = (50.0, 90.0)   # the range a differentiable JPEG is drawn from


def resize(images01: torch.Tensor, size: int) -> torch.Tensor:
    """N x 3 x H x W in [0, 1] -> N x 3 x size x size, antialiased bicubic (PIL's resize), clamped."""
    if images01.shape[-1] == size and images01.shape[-2] == size:
        return images01
    out = F.interpolate(images01, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0)


def crop_box(height: int, width: int, scale_min: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box: area share in [scale_min, 1], log-uniform aspect in
    [3/4, 4/3]; (top, left, h, w). Ten tries, then the whole image, as torchvision does."""
    area = height * width
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale_min, 1.0, generator=generator))
        ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    return 0, 0, height, width


def thief_view(images01: torch.Tensor, size: int, generator: torch.Generator, crop_scale: float = 0.5,
               jpeg: float = 0.0, gray: float = 0.0) -> torch.Tensor:
    """One random training view per image (differentiable in ``images01``): JPEG and grayscale at
    the stored size first (a re-encoded or squeezed copy of the file), then crop, resize and flip."""
    n = len(images01)
    x = images01
    if jpeg > 0:
        pick = torch.rand(n, generator=generator) < jpeg
        if pick.any():
            from kornia.enhance import jpeg_codec_differentiable

            quality = torch.empty(int(pick.sum())).uniform_(*JPEG_QUALITY, generator=generator).to(x.device)
            coded = jpeg_codec_differentiable(x[pick.to(x.device)], quality)
            x = x.clone()
            x[pick.to(x.device)] = coded
    if gray > 0:
        pick = (torch.rand(n, generator=generator) < gray).to(x.device)
        luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1).expand_as(x)
        x = torch.where(pick.view(-1, 1, 1, 1), luma, x)
    views = []
    flips = torch.rand(n, generator=generator) < 0.5
    for i in range(n):
        top, left, h, w = crop_box(x.shape[-2], x.shape[-1], crop_scale, generator)
        view = resize(x[i : i + 1, :, top : top + h, left : left + w], size)
        views.append(view.flip(-1) if flips[i] else view)
    return torch.cat(views)
