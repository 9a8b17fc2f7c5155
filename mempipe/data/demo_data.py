"""Procedural image-caption pairs in the img2dataset layout (``mempipe demo-data``).

Two styles: ``scenes`` (below; flat colours, learned in a few epochs) and ``photo``
(``photo_data.py``; natural-image statistics, learned slowly).

Scenes are compositional (one or two objects: shape, colour, size, position, on a
patterned background) and captions describe them in varied templates: lead-ins or
none, clauses in either order, optional filler words, synonyms. A text encoder must
read the words, not their positions, so caption edits alone cannot pass for protection.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, ImageDraw

from ..io.shards import ShardOutput, write_shard
from ..io.storage import join

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 215, 40),
    "purple": (140, 50, 170), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
    "cyan": (40, 200, 210), "pink": (240, 130, 180), "brown": (120, 75, 35), "gray": (130, 130, 130),
}
SHAPES = ["circle", "square", "triangle", "cross", "ring", "diamond", "bar", "star"]
SHAPE_WORDS = {
    "circle": ["circle", "disc", "round dot"], "square": ["square", "box", "block"],
    "triangle": ["triangle", "wedge"], "cross": ["cross", "plus sign"], "ring": ["ring", "hoop"],
    "diamond": ["diamond", "rhombus"], "bar": ["bar", "stripe", "stick"], "star": ["star", "spiky star"],
}
SIZES = {"small": 0.16, "large": 0.30}
SIZE_WORDS = {"small": ["small", "tiny", "little"], "large": ["large", "big", "huge"]}
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "center": (0.5, 0.5)}
POSITION_WORDS = {
    "left": ["on the left", "at the left side", "to the left"], "right": ["on the right", "at the right side", "to the right"],
    "top": ["at the top", "near the top", "up high"], "bottom": ["at the bottom", "near the bottom", "down low"],
    "center": ["in the middle", "in the center", "at the centre"],
}
BACKGROUNDS = ["plain", "striped", "checkered", "gradient", "dotted"]
BACKGROUND_WORDS = {
    "plain": ["plain", "flat", "solid"], "striped": ["striped", "lined"], "checkered": ["checkered", "tiled"],
    "gradient": ["gradient", "fading"], "dotted": ["dotted", "speckled"],
}
LEAD_INS = ["", "", "a photo of", "an image of", "a picture showing", "there is", "this shows", "a drawing of",
            "a rendering of", "look at", "close-up of", "a simple scene with"]
FILLERS = ["", "", "", "nice", "simple", "clean", "digital art", "minimal", "neat", "high quality", "flat design"]
BG_NOUNS = ["background", "backdrop", "wall", "canvas"]


def _pick(rng: np.random.RandomState, options):
    return options[rng.randint(len(options))]


def _draw_background(draw: ImageDraw.ImageDraw, size: int, kind: str, colour, rng) -> None:
    base = np.array(colour)
    light = tuple(int(v) for v in np.clip(base * 0.55 + 110, 0, 255))
    draw.rectangle([0, 0, size, size], fill=tuple(int(v) for v in base))
    step = max(4, size // rng.randint(5, 9))
    if kind == "striped":
        vertical = rng.rand() < 0.5
        for i in range(0, size, step * 2):
            box = [i, 0, i + step - 1, size] if vertical else [0, i, size, i + step - 1]
            draw.rectangle(box, fill=light)
    elif kind == "checkered":
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=light)
    elif kind == "gradient":
        for y in range(size):
            t = y / max(1, size - 1)
            draw.line([0, y, size, y], fill=tuple(int(a * (1 - t) + b * t) for a, b in zip(base, light)))
    elif kind == "dotted":
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=light)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    elif shape == "cross":
        w = r / 2.5
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 2.5)))
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "bar":
        draw.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=colour)
    elif shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            ang = np.pi / 2 + i * np.pi / 5
            pts.append((cx + rad * np.cos(ang), cy - rad * np.sin(ang)))
        draw.polygon(pts, fill=colour)


def _object_phrase(rng, obj, shape_words: dict) -> str:
    words = [_pick(rng, SIZE_WORDS[obj["size"]]), obj["colour"], _pick(rng, shape_words[obj["shape"]])]
    if rng.rand() < 0.3:  # colour before size, as people also write
        words[0], words[1] = words[1], words[0]
    phrase = " ".join(words)
    if rng.rand() < 0.75:
        phrase += " " + _pick(rng, POSITION_WORDS[obj["position"]])
    return phrase


def make_sample(index: int, size: int, seed: int, shapes: list[str] | None = None, shape_words: dict | None = None,
                paste_shape=None) -> tuple[np.ndarray, str, dict]:
    """One scene and its caption, fully determined by (seed, index).

    ``shapes``, ``shape_words`` and ``paste_shape(image, shape, cx, cy, r, colour)``: draw other
    shapes than the scenes' own (the fine-tuning regime's owner data); the defaults give the
    demo scenes, byte for byte."""
    shapes, shape_words = shapes or SHAPES, shape_words or SHAPE_WORDS
    rng = np.random.RandomState((seed * 1_000_003 + index) % (2**32))
    colour_names = list(COLOURS)
    bg_kind = _pick(rng, BACKGROUNDS)
    bg_colour = _pick(rng, colour_names)
    n_objects = 1 if rng.rand() < 0.55 else 2
    positions = list(rng.permutation(list(POSITIONS)))[:n_objects]
    objects = []
    for pos in positions:
        colour = _pick(rng, [c for c in colour_names if c != bg_colour])
        objects.append({"shape": _pick(rng, shapes), "colour": colour, "size": _pick(rng, list(SIZES)), "position": pos})

    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    _draw_background(draw, size, bg_kind, COLOURS[bg_colour], rng)
    for obj in objects:
        fx, fy = POSITIONS[obj["position"]]
        jitter = (rng.rand(2) - 0.5) * 0.08 * size
        where = (obj["shape"], fx * size + jitter[0], fy * size + jitter[1], SIZES[obj["size"]] * size, COLOURS[obj["colour"]])
        if paste_shape is None:
            _draw_shape(draw, *where)
        else:
            paste_shape(image, *where)

    things = [_object_phrase(rng, o, shape_words) for o in objects]
    objects_text = " and ".join(things) if rng.rand() < 0.7 else ", ".join(things)
    bg_text = f"{_pick(rng, BACKGROUND_WORDS[bg_kind])} {bg_colour} {_pick(rng, BG_NOUNS)}"
    if rng.rand() < 0.5:
        body = f"{objects_text} {_pick(rng, ['on a', 'over a', 'against a', 'in front of a'])} {bg_text}"
    else:
        body = f"{_pick(rng, ['on a', 'over a'])} {bg_text}, {objects_text}"
    parts = [_pick(rng, LEAD_INS), _pick(rng, FILLERS), body]
    if rng.rand() < 0.2:
        parts.append(_pick(rng, ["", "today", "again", "for the demo", "in daylight"]))
    caption = " ".join(p for p in parts if p)
    scene = {"background": [bg_kind, bg_colour], "objects": objects}
    return np.asarray(image), caption, scene


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


STYLES = ("scenes", "photo", "owner", "web")
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
        from .photo_data import make_photo_sample

        return make_photo_sample(index, size, seed, difficulty, caption_variant)
    if style == "owner":   # the fine-tuning regime: shapes the public stand-in models never saw
        from .web_corpus import make_owner_sample

        return make_owner_sample(index, size, seed)
    if style == "web":     # the public stand-ins' pretraining corpus
        from .web_corpus import make_web_sample

        return make_web_sample(index, size, seed)
    raise ValueError(f"unknown demo-data style {style!r}; choose from {STYLES}")


def write_split(out_url: str, count: int, size: int, seed: int, first_index: int, per_shard: int = 500,
                storage_options: dict | None = None, style: str = "scenes",
                difficulty: float = DEFAULT_DIFFICULTY, captions_per_image: int = 1) -> int:
    """Write ``count`` pairs as img2dataset-style shards; returns the number of shards.

    With ``captions_per_image`` n > 1, pairs come in runs of n that share one image (same
    bytes, same url) and carry its n captions, the way ``mempipe ingest --captions all``
    writes Flickr8K: ``count`` pairs show ``ceil(count / n)`` images.
    """
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
            pixels, caption, scene = sample_for(style, image_index, size, seed, difficulty, variant)
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
                    storage_options: dict | None = None, style: str = "scenes",
                    difficulty: float = DEFAULT_DIFFICULTY, captions_per_image: int = 1) -> dict:
    """``OUT/train`` and ``OUT/test``; test samples never share an image with train samples.

    ``captions_per_image`` applies to train only: the test split keeps one caption per image
    so that retrieval ranks distinct images and chance stays 10 / test.
    """
    options = dict(storage_options=storage_options, style=style, difficulty=difficulty)
    n_train = write_split(join(out_url, "train"), train, size, seed, 0, captions_per_image=captions_per_image,
                          **options)
    n_test = write_split(join(out_url, "test"), test, size, seed, 10_000_000, **options)
    out = {"train": train, "test": test, "train_shards": n_train, "test_shards": n_test, "size": size, "seed": seed,
           "style": style}
    if style == "photo":
        out["difficulty"] = difficulty
    if captions_per_image > 1:
        out["captions_per_image"] = captions_per_image
    return out
