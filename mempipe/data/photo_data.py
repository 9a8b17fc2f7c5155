"""Photo-like procedural pairs (``mempipe demo-data --style photo``): content that is slow to learn.

Unlearnable examples work only where a victim learns the planted shortcut before the
content. The flat ``scenes`` style is learned in a few epochs; photos are not. What makes
photos slow is imitated here, not their look:

- backgrounds are coloured 1/f noise (the power spectrum of natural images), so edges and
  blobs are everywhere, not only at the objects;
- an object's identity is its **shape** alone: every instance gets a random colour pair, a
  random texture, scale, rotation and place, and a partial opacity against the clutter;
- unlabelled distractors (textured blobs and strokes) appear in the image and never in the
  caption;
- captions name the objects with synonyms in varied structures, sometimes with size or
  place, **never colour** (colour is a one-pixel feature and would make the content easy).

One knob, ``difficulty`` in [0, 1], moves all nuisance together: from flat, opaque, large,
nearly upright objects on a faint background (0) to textured, translucent, smaller objects
at any angle among distractors on strong 1/f clutter with grain (1). Bytes are a pure
function of (seed, index, size, difficulty).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SHAPE_WORDS = {
    "circle": ["circle", "disc", "round shape"],
    "square": ["square", "box"],
    "triangle": ["triangle", "wedge"],
    "star": ["star", "starburst"],
    "cross": ["cross", "plus sign"],
    "ring": ["ring", "hoop", "donut"],
    "heart": ["heart", "heart shape"],
    "crescent": ["crescent", "moon shape"],
    "arrow": ["arrow", "pointer"],
    "hexagon": ["hexagon", "six-sided shape"],
    "diamond": ["diamond", "rhombus"],
    "bar": ["bar", "stick", "rod"],
    "pentagon": ["pentagon", "five-sided shape"],
    "oval": ["oval", "egg shape"],
    "flower": ["flower", "blossom"],
    "frame": ["frame", "hollow square"],
}
SHAPES = list(SHAPE_WORDS)
# The fine-tuning regime splits the shapes: public stand-in models are pretrained on one half
# (the shapes the flat demo scenes draw too), and the owner's data holds the other half,
# concepts those models never saw.
PUBLIC_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "bar")
OWNER_SHAPES = tuple(s for s in SHAPES if s not in PUBLIC_SHAPES)
SIZE_WORDS = {"small": ["small", "tiny", "little"], "large": ["large", "big", "huge"]}
PLACE_WORDS = {
    "left": ["on the left", "at the left"], "right": ["on the right", "at the right"],
    "top": ["at the top", "near the top"], "bottom": ["at the bottom", "near the bottom"],
    "center": ["in the middle", "in the center"],
}
LEAD_INS = ["", "", "a photo of", "a picture of", "an image of", "close-up of", "a snapshot showing", "there is",
            "we can see", "this shows", "a shot of", "somewhere there is"]
JOINERS = [" and ", " and ", ", ", " next to ", " beside ", " with "]
TAILS = ["", "", "", "", "in the clutter", "on a busy background", "among other things", "outdoors", "seen up close",
         "in soft light"]
# relative radius limits of a mentioned size (objects in between are never called small or large)
SMALL_BELOW, LARGE_ABOVE = 0.17, 0.25


def _pick(rng: np.random.RandomState, options):
    return options[rng.randint(len(options))]


def pink_noise(rng: np.random.RandomState, size: int, exponent: float = 1.0) -> np.ndarray:
    """A size x size field with a 1/f^exponent amplitude spectrum, zero mean, unit std."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    spectrum = (rng.randn(size, size // 2 + 1) + 1j * rng.randn(size, size // 2 + 1)) / radius**exponent
    spectrum[0, 0] = 0
    field = np.fft.irfft2(spectrum, s=(size, size))
    return (field - field.mean()) / (field.std() + 1e-8)


def _colour(rng) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _texture(rng, size: int) -> np.ndarray:
    """A [0, 1] texture field: stripes, checks, spots, 1/f noise or a gradient, at a random scale."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    kind = rng.randint(5)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(3, 10)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    if kind == 0:
        field = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u)
    elif kind == 1:
        field = ((np.floor(freq * u) + np.floor(freq * v)) % 2).astype(float)
    elif kind == 2:
        field = (np.sin(2 * np.pi * freq * u) * np.sin(2 * np.pi * freq * v) > 0.3).astype(float)
    elif kind == 3:
        field = np.clip(0.5 + 0.3 * pink_noise(rng, size, rng.uniform(0.8, 1.6)), 0, 1)
    else:
        field = np.clip(u * rng.uniform(0.8, 1.5), 0, 1)
    return field


def _polygon(points: np.ndarray, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + r * (c * x - s * y), cy + r * (s * x + c * y)) for x, y in points]


def _regular(n: int, start: float = -np.pi / 2) -> np.ndarray:
    t = start + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], 1)


SHAPE_POINTS = {
    "triangle": _regular(3),
    "square": np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]),
    "diamond": np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]]),
    "pentagon": _regular(5),
    "hexagon": _regular(6),
    "star": np.array([(np.cos(t) * r, np.sin(t) * r) for t, r in
                      zip(-np.pi / 2 + np.pi * np.arange(10) / 5, [1, 0.42] * 5)]),
    "cross": np.array([[-0.3, -1], [0.3, -1], [0.3, -0.3], [1, -0.3], [1, 0.3], [0.3, 0.3], [0.3, 1], [-0.3, 1],
                       [-0.3, 0.3], [-1, 0.3], [-1, -0.3], [-0.3, -0.3]]),
    "arrow": np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.65], [1, 0], [0.2, 0.65], [0.2, 0.25], [-1, 0.25]]),
    "bar": np.array([[-1, -0.28], [1, -0.28], [1, 0.28], [-1, 0.28]]),
    "oval": np.stack([np.cos(t := np.linspace(0, 2 * np.pi, 40, endpoint=False)), 0.58 * np.sin(t)], 1),
    "heart": np.stack([(16 * np.sin(t) ** 3) / 17,
                       -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 17 - 0.1], 1),
    "flower": np.stack([np.cos(t) * (0.6 + 0.4 * np.cos(5 * t)), np.sin(t) * (0.6 + 0.4 * np.cos(5 * t))], 1),
}


def shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float, supersample: int = 3) -> np.ndarray:
    """Anti-aliased [0, 1] mask of one rotated shape (centre and radius in pixels)."""
    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = cx * supersample, cy * supersample, r * supersample
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=0)
    elif shape == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = 0.45 * r * np.cos(angle), 0.45 * r * np.sin(angle)
        draw.ellipse([cx + ox - 0.85 * r, cy + oy - 0.85 * r, cx + ox + 0.85 * r, cy + oy + 0.85 * r], fill=0)
    elif shape == "frame":
        draw.polygon(_polygon(SHAPE_POINTS["square"], cx, cy, r, angle), fill=255)
        draw.polygon(_polygon(SHAPE_POINTS["square"], cx, cy, 0.55 * r, angle), fill=0)
    else:
        draw.polygon(_polygon(SHAPE_POINTS[shape], cx, cy, r, angle), fill=255)
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float64) / 255.0


def _distractor_mask(rng, size: int) -> np.ndarray:
    """An unnamed thing: a soft blob cut from low-frequency noise, or a curved stroke."""
    if rng.rand() < 0.5:
        field = pink_noise(rng, size, 2.5)
        yy, xx = np.mgrid[0:size, 0:size] / size
        cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.08, 0.2)
        envelope = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        return np.clip((field * 0.5 + 2 * envelope - 1.2) * 3, 0, 1)
    canvas = Image.new("L", (size * 3, size * 3), 0)
    points = np.cumsum(rng.randn(6, 2) * size * 0.35, 0) + rng.uniform(0.2, 0.8, 2) * size * 3
    ImageDraw.Draw(canvas).line([tuple(p) for p in points], fill=255, width=max(3, int(size * rng.uniform(0.04, 0.1))))
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float64) / 255.0


def _composite(image: np.ndarray, mask: np.ndarray, rng, size: int, opacity: float, contrast: float) -> None:
    texture = _texture(rng, size)[..., None]
    a, b = _colour(rng), _colour(rng)
    fill = a + contrast * texture * (b - a)    # low contrast: a flat patch, high: a strong texture
    alpha = (mask * opacity)[..., None]
    image *= 1 - alpha
    image += alpha * fill


def _place(obj_xy: tuple[float, float]) -> str | None:
    """The place word a viewer would use, or None when the object is not clearly anywhere."""
    x, y = obj_xy
    if abs(x - 0.5) < 0.12 and abs(y - 0.5) < 0.12:
        return "center"
    if abs(x - 0.5) > abs(y - 0.5) + 0.1:
        return "left" if x < 0.5 else "right"
    if abs(y - 0.5) > abs(x - 0.5) + 0.1:
        return "top" if y < 0.5 else "bottom"
    return None


def _phrase(rng, obj: dict) -> str:
    words = []
    size_word = "small" if obj["radius"] < SMALL_BELOW else "large" if obj["radius"] > LARGE_ABOVE else None
    if size_word and rng.rand() < 0.35:
        words.append(_pick(rng, SIZE_WORDS[size_word]))
    words.append(_pick(rng, SHAPE_WORDS[obj["shape"]]))
    noun = " ".join(words)
    phrase = ("an " if noun[0] in "aeiou" else "a ") + noun
    if obj["place"] and rng.rand() < 0.3:
        phrase += " " + _pick(rng, PLACE_WORDS[obj["place"]])
    return phrase


def make_photo_sample(index: int, size: int, seed: int, difficulty: float,
                      caption_variant: int = 0, shapes: tuple[str, ...] | None = None) -> tuple[np.ndarray, str, dict]:
    """One photo-like image and one of its captions, fully determined by the arguments.

    Variant 0 is the caption drawn right after the image (the single-caption data set);
    variants 1, 2, ... are further captions of the same image, as Flickr8K and COCO give five
    annotators' captions per photo: same objects, independently drawn words and structure.
    ``shapes``: draw the objects from these shapes only (default: all of them).
    """
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    pixels, objects, n_distractors, rng_state = _photo_image(index, size, seed, difficulty, shapes)
    rng = np.random.RandomState()
    if caption_variant:
        rng.seed((seed * 1_000_003 + index * 7 + 54321 + caption_variant * 104_729) % (2**32))
    else:
        rng.set_state(rng_state)      # continue the image's stream: single-caption bytes stay as they were
    phrases = [_phrase(rng, o) for o in objects]
    body = phrases[0]
    for phrase in phrases[1:]:
        body += _pick(rng, JOINERS) + phrase
    caption = " ".join(p for p in (_pick(rng, LEAD_INS), body, _pick(rng, TAILS)) if p)
    scene = {"style": "photo", "difficulty": difficulty, "objects": [dict(o) for o in objects],
             "distractors": int(n_distractors)}
    return pixels.copy(), caption, scene


@lru_cache(maxsize=4)   # the captions of one image are written one after another: draw the image once
def _photo_image(index: int, size: int, seed: int, difficulty: float, pool: tuple[str, ...] | None = None):
    rng = np.random.RandomState((seed * 1_000_003 + index * 7 + 12345) % (2**32))
    d = difficulty
    # background: two colours mixed by 1/f noise, plus a second finer 1/f layer
    base, tint = _colour(rng), _colour(rng) - 128
    coarse = pink_noise(rng, size, rng.uniform(1.0, 1.6))
    fine = pink_noise(rng, size, rng.uniform(0.6, 1.0))
    amplitude = 0.1 + 0.7 * d
    image = base[None, None, :] * (1 - 0.3 * amplitude) + (coarse[..., None] * tint[None, None, :] * amplitude * 0.8
                                                          + fine[..., None] * 30 * amplitude)
    image = np.clip(image, 0, 255)

    n_distractors = rng.poisson(4.0 * d)
    n_objects = 1 + int(rng.rand() < 0.45) + int(rng.rand() < 0.15)
    layers = ["distractor"] * n_distractors + ["object"] * n_objects
    rng.shuffle(layers)
    objects, centres = [], []
    shapes = list(rng.permutation(SHAPES if pool is None else list(pool))[:n_objects])
    for layer in layers:
        if layer == "distractor":
            _composite(image, _distractor_mask(rng, size), rng, size, rng.uniform(0.4, 0.9), rng.uniform(0.3, 1.0))
            continue
        radius = rng.uniform(0.26 - 0.12 * d, 0.34 - 0.06 * d)
        for _ in range(20):  # keep named objects apart so each stays recognisable
            cx, cy = rng.uniform(radius, 1 - radius, 2)
            if all((cx - x) ** 2 + (cy - y) ** 2 > (radius + r) ** 2 * 0.7 for x, y, r in centres):
                break
        centres.append((cx, cy, radius))
        shape = shapes.pop()
        angle = rng.uniform(-1, 1) * np.pi * (0.15 + 0.85 * d)   # upright-ish when easy, any angle when hard
        mask = shape_mask(shape, size, cx * size, cy * size, radius * size, angle)
        opacity = rng.uniform(1.0 - 0.55 * d, 1.0)
        _composite(image, mask, rng, size, opacity, rng.uniform(0.0, 0.3 + 0.7 * d))
        objects.append({"shape": shape, "radius": round(float(radius), 3), "place": _place((cx, cy)),
                        "opacity": round(float(opacity), 3)})
    # camera: exposure and contrast jitter, sensor grain
    gain = rng.uniform(1.0 - 0.4 * d, 1.0)
    image = (image - 128) * gain + 128 + rng.uniform(-25, 25) * d + rng.randn(size, size, 3) * (1 + 7 * d)
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    return pixels, objects, n_distractors, rng.get_state()
