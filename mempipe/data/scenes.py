"""The ``scenes`` style of demo data: flat colours, learned in a few epochs.

Scenes are compositional (one or two objects: shape, colour, size, position, on a
patterned background) and captions describe them in varied templates: lead-ins or
none, clauses in either order, optional filler words, synonyms. A text encoder must
read the words, not their positions, so caption edits alone cannot pass for protection.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

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
