"""Procedural image-caption pairs in the img2dataset layout (``mempipe demo-data``).

Styles: ``scenes`` (``scenes.py``; flat colours, learned in a few epochs), ``photo``
(``photo_data.py``; natural-image statistics, learned slowly), and the fine-tuning regime's
``web`` (``web_corpus.py``), the public stand-ins' pretraining corpus. A research style
brings its own generator (``Style.sample``), as the benchmarks' owner data does.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from PIL import Image

from ..io.shards import ShardOutput, write_shard
from ..io.storage import join
from .photo_data import make_photo_sample
from .scenes import make_sample
from .web_corpus import make_web_sample


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


STYLES = ("scenes", "photo", "web")   # a research style brings its own generator (Style.sample)
# The photo style's difficulty, frozen by bench/calibrate.py on clean and random-words curves
# alone (bench/results/calibration.json) before any protected set was trained on. Never tuned
# after seeing protection results; tests/test_demo_data.py checks it against that file.
PHOTO_DIFFICULTY = 0.3
PHOTO_CAPTIONS_PER_IMAGE = 1
DEFAULT_DIFFICULTY = PHOTO_DIFFICULTY


def sample_for(style: str, index: int, size: int, seed: int, difficulty: float = DEFAULT_DIFFICULTY,
               caption_variant: int = 0):
    """(pixels, caption, scene) of one sample of either style (caption variants: photo only)."""
    if style == "scenes":
        return make_sample(index, size, seed)
    if style == "photo":
        return make_photo_sample(index, size, seed, difficulty, caption_variant)
    if style == "web":     # the public stand-ins' pretraining corpus
        return make_web_sample(index, size, seed)
    raise ValueError(f"unknown demo-data style {style!r}; choose from {STYLES}")


@dataclass(frozen=True)
class Style:
    """Which generator, and the photo style's two knobs.

    With ``captions_per_image`` n > 1, pairs come in runs of n that share one image (same
    bytes, same url) and carry its n captions, the way ``mempipe ingest --captions all``
    writes Flickr8K: ``count`` pairs show ``ceil(count / n)`` images.
    """

    name: str = "scenes"
    difficulty: float = DEFAULT_DIFFICULTY
    captions_per_image: int = 1
    sample: Callable | None = None   # (index, size, seed) -> (pixels, caption, scene): a style of one's own


def write_split(out_url: str, count: int, size: int, seed: int, first_index: int, per_shard: int = 500,
                storage_options: dict | None = None, style: str | Style = "scenes") -> int:
    """Write ``count`` pairs as img2dataset-style shards; returns the number of shards."""
    given = style if isinstance(style, Style) else Style(style)
    style, difficulty, captions_per_image = given.name, given.difficulty, given.captions_per_image
    if given.sample is None and style not in STYLES:
        raise ValueError(f"unknown demo-data style {style!r}; choose from {STYLES}")
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}")
    if captions_per_image > 1 and style != "photo":
        raise ValueError("several captions per image: photo style only")
    shards = (count + per_shard - 1) // per_shard
    generator = {"generator": "mempipe demo-data", "seed": seed, "size": size, "style": style}
    if style == "photo":
        generator["difficulty"] = difficulty
    if captions_per_image > 1:
        generator["captions_per_image"] = captions_per_image
    for shard_id in range(shards):
        samples = []
        for i in range(shard_id * per_shard, min(count, (shard_id + 1) * per_shard)):
            image_index, variant = first_index + i // captions_per_image, i % captions_per_image
            pixels, caption, scene = (given.sample(image_index, size, seed) if given.sample else
                                      sample_for(style, image_index, size, seed, difficulty, variant))
            key = f"{shard_id:05d}{i - shard_id * per_shard:04d}"
            data = _jpeg(pixels)
            meta = {
                "url": f"demo://{seed}/{image_index}.jpg", "key": key, "caption": caption,
                "status": "success", "error_message": None, "width": size, "height": size,
                "original_width": size, "original_height": size, "exif": "{}",
                "sha256": hashlib.sha256(data).hexdigest(), "scene": scene,
            }
            samples.append(ShardOutput(key=key, image=data, image_ext="jpg", caption=caption, meta=meta))
        write_shard(out_url, f"{shard_id:05d}", samples, storage_options=storage_options, record_timing=False,
                    extra_stats=generator)
    return shards


def write_demo_data(out_url: str, train: int, test: int, size: int = 64, seed: int = 0,
                    storage_options: dict | None = None, style: str | Style = "scenes") -> dict:
    """``OUT/train`` and ``OUT/test``; test samples never share an image with train samples.

    ``captions_per_image`` applies to train only: the test split keeps one caption per image
    so that retrieval ranks distinct images and chance stays 10 / test.
    """
    style = style if isinstance(style, Style) else Style(style)
    n_train = write_split(join(out_url, "train"), train, size, seed, 0, storage_options=storage_options, style=style)
    n_test = write_split(join(out_url, "test"), test, size, seed, 10_000_000, storage_options=storage_options,
                         style=replace(style, captions_per_image=1))
    out = {"train": train, "test": test, "train_shards": n_train, "test_shards": n_test, "size": size, "seed": seed,
           "style": style.name}
    if style.name == "photo":
        out["difficulty"] = style.difficulty
    if style.captions_per_image > 1:
        out["captions_per_image"] = style.captions_per_image
    return out
