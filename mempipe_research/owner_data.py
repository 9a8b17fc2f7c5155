"""The fine-tuning regimes' owner data: flat scenes of the shapes the public stand-ins never saw.

A research style of ``mempipe demo-data``'s generator: ``write_demo_data(..., style=OWNER)``.
"""
from __future__ import annotations

import numpy as np

from mempipe.data.demo_data import Style
from mempipe.data.photo_data import OWNER_SHAPES, SHAPE_WORDS
from mempipe.data.scenes import LEAD_INS as SCENE_LEAD_INS
from mempipe.data.scenes import POSITION_WORDS
from mempipe.data.scenes import SIZE_WORDS as SCENE_SIZE_WORDS
from mempipe.data.scenes import make_sample as make_scene_sample
from mempipe.data.web_corpus import paste_shape


def make_owner_sample(index: int, size: int, seed: int) -> tuple[np.ndarray, str, dict]:
    """One pair of the owner's data: a flat scene of shapes the public models never saw, on the
    backgrounds and in the colours they know. The caption names the shapes, their sizes and
    places, never a colour or the background: what tells two captions apart is the new concept."""
    pixels, _, scene = make_scene_sample(index, size, seed, shapes=list(OWNER_SHAPES), shape_words=SHAPE_WORDS,
                                         paste_shape=paste_shape)
    rng = np.random.RandomState((seed * 1_000_003 + index * 13 + 4242) % (2**32))
    phrases = []
    for obj in scene["objects"]:
        words = [SCENE_SIZE_WORDS[obj["size"]][rng.randint(3)]] if rng.rand() < 0.6 else []
        words.append(SHAPE_WORDS[obj["shape"]][rng.randint(len(SHAPE_WORDS[obj["shape"]]))])
        phrase = ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)
        if rng.rand() < 0.75:
            options = POSITION_WORDS[obj["position"]]
            phrase += " " + options[rng.randint(len(options))]
        phrases.append(phrase)
    lead = SCENE_LEAD_INS[rng.randint(len(SCENE_LEAD_INS))]
    caption = " ".join(p for p in (lead, " and ".join(phrases)) if p)
    return pixels, caption, {**scene, "style": "owner"}


OWNER = Style("owner", sample=make_owner_sample)
