"""A model-free shortcut in the spirit of CUDA (Sadasivan et al., CVPR 2023): every group of
images is blurred by the group's own random filter, so that the filter, not the content, is
what tells the groups apart.

Each group draws one k x k filter per colour channel: the centre tap is 1, every other tap
is uniform in [0, blur], and the taps are normalised to sum to 1 (brightness is kept; the
larger ``blur``, the stronger the smear). A filter changes an image by much more than an
L-inf budget of a few levels: what it spends is reported as PSNR/SSIM beside the eps-bounded
methods, and ``bound`` only clamps the change to what the int8 noise can carry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_filters(n_groups: int, kernel_size: int, blur: float, generator: torch.Generator) -> torch.Tensor:
    """(G, 3, 1, k, k) per-channel filters, each summing to 1, centre tap before normalising = 1."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {kernel_size}")
    taps = torch.rand(n_groups, 3, 1, kernel_size, kernel_size, generator=generator) * blur
    taps[..., kernel_size // 2, kernel_size // 2] = 1.0
    return taps / taps.sum(dim=(-2, -1), keepdim=True)


def convolution_noise(images: torch.Tensor, groups: torch.Tensor, kernel_size: int, blur: float, bound: int,
                      generator: torch.Generator) -> torch.Tensor:
    """int8 noise (N x 3 x S x S) = each image filtered by its group's filter, minus the image.

    ``images``: N x 3 x S x S uint8; ``groups``: N ids 0..G-1 (one per sample: a per-image filter,
    i.e. the same smear with no shortcut in it, which is the control for the grouped version).
    """
    if groups.shape != (len(images),):
        raise ValueError("one group id per image")
    filters = random_filters(int(groups.max()) + 1, kernel_size, blur, generator)
    pad, (n, channels, height, width) = kernel_size // 2, images.shape
    # every image's own filters in one grouped convolution (one group per image and channel)
    weights = filters[groups].reshape(n * channels, 1, kernel_size, kernel_size)
    # reflect padding: a zero border would darken the edges of every image alike (a shortcut of its own)
    x = images.float()
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, n * channels, height + 2 * pad, width + 2 * pad)
    filtered = F.conv2d(padded, weights, groups=n * channels).reshape_as(x)
    delta = filtered.round().clamp(0, 255) - x
    return delta.clamp(-bound, bound).to(torch.int8)
