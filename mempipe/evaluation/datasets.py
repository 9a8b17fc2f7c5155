"""Loading shards the way a downstream trainer does: webdataset, image file + txt caption.

Also the data-side countermeasures a thief would try (JPEG re-encoding, grayscale,
stripping the first k caption words) and the prefixed test captions of the protocol.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from ..engine.text import insert_words, random_trigger_ids, tokenizer, vocabulary_mask, word_boundaries
from ..io.images import to_surrogate_input
from ..io.shards import list_shards


def _register_fsspec_urls() -> None:
    """Let webdataset open s3:// (and any fsspec) URLs through fsspec."""
    import importlib

    import fsspec

    gopen = importlib.import_module("webdataset.gopen")  # the module; the package re-exports a function by that name

    def opener(url, mode="rb", bufsize=8192, **_):
        return fsspec.open(url, mode).open()

    for scheme in ("s3", "gs", "gcs", "az", "abfs", "memory"):
        gopen.gopen_schemes.setdefault(scheme, opener)


def check_defense(defense: str) -> str:
    """The countermeasures a victim can apply: none, jpeg:Q (1..100), grayscale, strip:K, crop."""
    kind, _, value = defense.partition(":")
    ok = (defense in ("none", "grayscale", "crop")
          or (kind == "jpeg" and value.isdigit() and 1 <= int(value) <= 100)
          or (kind == "strip" and value.isdigit() and int(value) >= 1))
    if not ok:
        raise ValueError(f"unknown --defense {defense!r}: use none, jpeg:Q (Q in 1..100), grayscale, strip:K or crop")
    return defense


def apply_image_defense(image: Image.Image, defense: str) -> Image.Image:
    if defense.startswith("jpeg:"):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(defense.split(":", 1)[1]))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if defense == "grayscale":
        return image.convert("L").convert("RGB")
    return image


def apply_caption_defense(caption: str, defense: str) -> str:
    if defense.startswith("strip:"):
        return " ".join(caption.split()[int(defense.split(":", 1)[1]):])
    return caption


def load_pairs(url: str, image_size: int, defense: str = "none", storage_options: dict | None = None,
               limit: int | None = None) -> tuple[torch.Tensor, list[str], list[str]]:
    """(N x 3 x S x S uint8 after 'resize shorter side + center crop', captions, keys)."""
    _register_fsspec_urls()
    urls = list_shards(url, storage_options)
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple(
        "__key__", "jpg;png;webp;jpeg", "txt")
    images, captions, keys = [], [], []
    for key, image, caption in dataset:
        image = apply_image_defense(image.convert("RGB"), defense)
        images.append(to_surrogate_input(np.asarray(image), image_size))
        captions.append(apply_caption_defense(caption, defense))
        keys.append(key)
        if limit and len(keys) >= limit:
            break
    if not images:
        raise ValueError(f"no image-caption pairs found under {url}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions, keys


def random_words(count: int, k: int, seed: int, vocabulary: str = "any") -> list[str]:
    """count strings of k random whole words each (the trigger vocabulary, nothing optimised)."""
    ids = random_trigger_ids(count, k, torch.Generator().manual_seed(seed), vocabulary_mask(vocabulary)).tolist()
    tok = tokenizer()
    return [tok.decode(row).strip() for row in ids]


def prefix_random_words(captions: list[str], k: int, seed: int) -> list[str]:
    """k random whole words in front of each caption (cancels the caption-format shift)."""
    return [words + " " + c for words, c in zip(random_words(len(captions), k, seed), captions)]


def insert_random_words(captions: list[str], k: int, seed: int, vocabulary: str = "common") -> list[str]:
    """k random words at a random word boundary of each caption: the edit of a randomly placed
    trigger (``trigger_placement="random"``) with nothing optimised."""
    boundary, _ = word_boundaries(captions, torch.Generator().manual_seed(seed + 1))
    return [insert_words(c, words, int(w)) for c, words, w in zip(captions, random_words(len(captions), k, seed, vocabulary), boundary)]
