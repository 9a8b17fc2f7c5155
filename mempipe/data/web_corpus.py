"""A generated web-like corpus for the public stand-in models of the fine-tuning regime.

Real public CLIPs are pretrained on alt-text scraped from the web; nothing can be downloaded
here, so the stand-ins are pretrained on this: half flat scenes (``demo_data``: colours,
backgrounds, places; quick to learn, so the text tower learns to read) and half photo-like
images (``photo_data``) at a spread of difficulties, both of the public half of the shapes
only, with captions as noisy as alt-text: varied templates, irrelevant words before or after some captions, and a few
captions that say nothing of the image at all. The owner's data (``OWNER_SHAPES``) holds the
other half, drawn as flat scenes, so the public models have never seen its concepts but know
its colours, backgrounds and places. Bytes are a pure function of
(seed, index, size).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .scenes import SHAPES as SCENE_SHAPES
from .scenes import make_sample as make_scene_sample
from .photo_data import PUBLIC_SHAPES, make_photo_sample, shape_mask

assert set(SCENE_SHAPES) <= set(PUBLIC_SHAPES), "the flat scenes must not show the owner's shapes"

ALT_TEXT_WORDS = ["stock photo", "hd wallpaper", "free download", "royalty free", "view larger", "photo by staff",
                  "best price", "new", "2019", "sale", "click to enlarge", "high resolution", "vector", "jpg",
                  "premium", "editorial use", "image", "gallery", "download now", "art print"]
UNRELATED = ["untitled", "img", "dsc", "thumbnail", "image not found", "placeholder", "banner", "logo", "home page",
             "product shot"]
IRRELEVANT_SHARE = 0.3   # captions with alt-text words before or after them
UNRELATED_SHARE = 0.06   # captions that say nothing of the image
DIFFICULTY_RANGE = (0.0, 0.6)
SCENES_SHARE = 0.5


def make_web_sample(index: int, size: int, seed: int) -> tuple[np.ndarray, str, dict]:
    """One public pair: a photo-like image of public shapes and an alt-text-like caption."""
    rng = np.random.RandomState((seed * 1_000_003 + index * 11 + 777) % (2**32))
    difficulty = round(float(rng.uniform(*DIFFICULTY_RANGE)), 3)
    if rng.rand() < SCENES_SHARE:
        pixels, caption, scene = make_scene_sample(index, size, seed)
    else:
        pixels, caption, scene = make_photo_sample(index, size, seed, difficulty, shapes=PUBLIC_SHAPES)
    draw = rng.rand()
    if draw < UNRELATED_SHARE:
        caption = f"{UNRELATED[rng.randint(len(UNRELATED))]} {rng.randint(10000)}"
    elif draw < UNRELATED_SHARE + IRRELEVANT_SHARE:
        words = " ".join(ALT_TEXT_WORDS[i] for i in rng.choice(len(ALT_TEXT_WORDS), rng.randint(1, 4), replace=False))
        caption = f"{words} {caption}" if rng.rand() < 0.5 else f"{caption} {words}"
    return pixels, caption, {**scene, "style": "web"}


def paste_shape(image: Image.Image, shape: str, cx: float, cy: float, r: float, colour) -> None:
    mask = shape_mask(shape, image.size[0], cx, cy, r, 0.0)
    image.paste(tuple(colour), mask=Image.fromarray((mask * 255).round().astype(np.uint8)))
