"""Loading shards for a victim: the hardened shard reader (limits, truncation, hostile members),
each image decoded defensively and shown as a trainer's 'resize + center crop' would.

Also the data-side countermeasures a thief would try (JPEG re-encoding, grayscale,
stripping the first k caption words) and the prefixed test captions of the protocol.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..engine.text import insert_words, random_trigger_ids, tokenizer, vocabulary_mask, word_boundaries
from ..io.images import ImageError, decode_rgb, to_surrogate_input
from ..io.shards import DEFAULT_LIMITS, list_shards, read_samples


@dataclass(frozen=True)
class Defense:
    """A countermeasure a thief applies before training, parsed once from its text: ``none``,
    ``jpeg:Q`` (Q in 1..100), ``grayscale``, ``strip:K`` (the first K caption words) or ``crop``
    (random resized crops while training: the victim's augmentation, not a change of the data)."""

    kind: str = "none"
    value: int = 0

    @classmethod
    def parse(cls, text: "str | Defense") -> "Defense":
        if isinstance(text, Defense):
            return text
        kind, _, value = text.partition(":")
        ok = ((text in ("none", "grayscale", "crop"))
              or (kind == "jpeg" and value.isdigit() and 1 <= int(value) <= 100)
              or (kind == "strip" and value.isdigit() and int(value) >= 1))
        if not ok:
            raise ValueError(f"unknown --defense {text!r}: use none, jpeg:Q (Q in 1..100), grayscale, strip:K or crop")
        return cls(kind, int(value) if value else 0)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}" if self.kind in ("jpeg", "strip") else self.kind

    def image(self, image: Image.Image) -> Image.Image:
        if self.kind == "jpeg":
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=self.value)
            return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        if self.kind == "grayscale":
            return image.convert("L").convert("RGB")
        return image

    def caption(self, caption: str) -> str:
        return " ".join(caption.split()[self.value:]) if self.kind == "strip" else caption


NO_DEFENSE = Defense()


def load_pairs(url: str, image_size: int, defense: Defense = NO_DEFENSE, storage_options: dict | None = None,
               limit: int | None = None) -> tuple[torch.Tensor, list[str], list[str]]:
    """(N x 3 x S x S uint8 after 'resize shorter side + center crop', captions, keys), read with the
    package's one shard reader; a sample it cannot use (no image, no caption, undecodable) is skipped."""
    images, captions, keys = [], [], []
    for shard in list_shards(url, storage_options):
        for sample in read_samples(shard, storage_options, DEFAULT_LIMITS):
            if sample.error or sample.caption is None:
                continue
            try:
                pixels, _ = decode_rgb(sample.image)
            except ImageError:
                continue
            pixels = np.asarray(defense.image(Image.fromarray(pixels))) if defense.kind in ("jpeg", "grayscale") else pixels
            images.append(to_surrogate_input(pixels, image_size))
            captions.append(defense.caption(sample.caption))
            keys.append(sample.key)
            if limit and len(keys) >= limit:
                return _stacked(images), captions, keys
    if not images:
        raise ValueError(f"no image-caption pairs found under {url}")
    return _stacked(images), captions, keys


def _stacked(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


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
