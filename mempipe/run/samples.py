"""A sample's way through a run, one function per step: read and decode, the surrogate's view,
and finishing (native-resolution noise, bound check, encoding, caption and provenance).

Only a sample's encoded bytes and its small surrogate-size input are held between steps;
full-resolution pixels are decoded again when the noise is applied, so a shard costs its
compressed size in memory, not its decoded size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import __version__
from ..engine import MEMConfig
from ..engine.text import decode_trigger, insert_words
from ..io.images import (ImageError, ImageFormat, apply_noise_native, decode_rgb, encode, image_pixels, max_abs_delta,
                         psnr, to_surrogate_input)
from ..io.provenance import SampleProvenance
from ..io.shards import DEFAULT_LIMITS, RawSample, ReadLimits, ShardOutput, read_samples, shard_name


@dataclass
class Decoded:
    """A readable sample: its raw record, the mode it was decoded from, and its surrogate-size input."""

    raw: RawSample
    source_mode: str
    surrogate_input: np.ndarray | None = None  # S x S x 3 uint8 at the run's image size

    @property
    def pixels(self) -> np.ndarray:
        return decode_rgb(self.raw.image)[0]


@dataclass
class ShardWork:
    """One input shard, read: its readable samples and the failure records of the others."""

    name: str
    failed: list[ShardOutput] = field(default_factory=list)
    decoded: list[Decoded] = field(default_factory=list)


class PixelBudget:
    """Decoded pixels one shard may cost (checked from image headers, before decoding)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def charge(self, pixels: int) -> str | None:
        if self.used + pixels > self.limit:
            return (f"shard pixel budget exhausted: this image ({pixels} px) would bring the shard past "
                    f"{self.limit} decoded pixels (raise --max-shard-megapixels or split the shard)")
        self.used += pixels
        return None


def failure(raw: RawSample, reason: str) -> ShardOutput:
    return ShardOutput(raw.key, None, None, raw.caption, raw.meta, reason)


def decode_sample(raw: RawSample, image_size: int | None = None, budget: PixelBudget | None = None) -> Decoded | ShardOutput:
    """A readable sample (with its surrogate-size input when ``image_size`` is given), or its failure record."""
    if raw.error:
        return failure(raw, raw.error)
    if budget is not None:
        refusal = budget.charge(image_pixels(raw.image))
        if refusal:
            return failure(raw, refusal)
    try:
        pixels, mode = decode_rgb(raw.image)
    except ImageError as exc:
        return failure(raw, str(exc))
    return Decoded(raw, mode, to_surrogate_input(pixels, image_size) if image_size else None)


def read_shard(url: str, storage_options: dict | None, limits: ReadLimits = DEFAULT_LIMITS,
               image_size: int | None = None) -> ShardWork:
    """One shard read (storage errors retried; :class:`StorageError` when they persist) and decoded."""
    work = ShardWork(shard_name(url))
    budget = PixelBudget(limits.max_shard_pixels)
    for raw in read_samples(url, storage_options, limits):
        item = decode_sample(raw, image_size, budget)
        (work.decoded if isinstance(item, Decoded) else work.failed).append(item)
    return work


def split_units(items: list[Decoded], unit_size: int) -> list[list[Decoded]]:
    """Balanced chunks of at most unit_size (2,500 samples at 2,048 become two of 1,250)."""
    if not items:
        return []
    parts = math.ceil(len(items) / unit_size)
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def surrogate_batch(items: list[Decoded], size: int) -> torch.Tensor:
    """N x 3 x S x S uint8: every image as the victim's preprocessing would show it."""
    def one(d: Decoded) -> np.ndarray:
        if d.surrogate_input is not None and d.surrogate_input.shape[0] == size:
            return d.surrogate_input
        return to_surrogate_input(d.pixels, size)

    return torch.from_numpy(np.stack([one(d) for d in items])).permute(0, 3, 1, 2).contiguous()


@dataclass
class Protection:
    """What the engine gave one sample: its noise at the stored size and its trigger."""

    noise: np.ndarray                 # S x S x 3, integer levels
    trigger_ids: list[int]
    trigger_word: int = 0             # the caption word the trigger goes before
    cluster: int | None = None


def finish_sample(item: Decoded, given: Protection, cfg: MEMConfig, fmt: ImageFormat, unit_id: str) -> ShardOutput:
    """Native-resolution noise, bound check, encoding, and the output caption and provenance."""
    raw = item.raw
    pixels = item.pixels
    protected = apply_noise_native(pixels, given.noise, cfg.epsilon)
    bound = max_abs_delta(protected, pixels)
    if bound > cfg.epsilon:  # apply_noise_native clamps, so this is a bug guard, never a normal path
        return failure(raw, f"noise bound violated: {bound} > {cfg.epsilon}")
    ext = fmt.extension(raw.image_ext)
    data = encode(protected, ext, fmt.quality)
    written, _ = decode_rgb(data)
    trigger = decode_trigger(given.trigger_ids) if given.trigger_ids else ""
    caption = insert_words(raw.caption, trigger, given.trigger_word)
    provenance = SampleProvenance(
        version=__version__, method=cfg.method, epsilon=cfg.epsilon, noise_scope=cfg.effective_noise_scope,
        unit=unit_id, max_delta=max_abs_delta(written, pixels), psnr=round(psnr(written, pixels), 3),
        image_format=ext if fmt.kind != "jpeg" else f"jpeg:{fmt.quality}", source_mode=item.source_mode,
        cluster=given.cluster, trigger_scope=cfg.trigger_scope if trigger else None, trigger=trigger or None,
        trigger_word_index=given.trigger_word if trigger else None, warnings=raw.warnings or None)
    meta = dict(raw.meta)
    if "caption" in meta:
        meta["caption"] = caption
    return ShardOutput(raw.key, data, ext, caption, meta, provenance=provenance)
