"""The photo-like style and the machinery the effectiveness numbers stand on.

A fixed class-wise pattern (at the largest budget the engine allows, 32 levels: at 16 levels a
tiny victim does not pick it up from photo-like clutter in 10 short epochs) planted on photo-like
images, with one caption per class, must be
learned by a victim trained from scratch through the real shard writer, webdataset loader,
victim and retrieval metric: the pattern alone (on a flat gray image) retrieves its class's
caption far above chance. A broken loader, victim or metric fails here.
"""
import json

import numpy as np
import torch

from mempipe.evaluation.datasets import load_pairs
from mempipe.data.demo_data import PHOTO_DIFFICULTY
from mempipe.io.images import encode
from mempipe.data.photo_data import SHAPE_WORDS, make_photo_sample
from mempipe.io.shards import ShardOutput, write_shard
from mempipe.evaluation.victim import VictimConfig, train_victim

CLASSES = 16
EPS = 32


def test_photo_samples_are_deterministic_and_never_name_a_colour():
    a = [make_photo_sample(i, 64, 3, 0.4) for i in range(40)]
    b = [make_photo_sample(i, 64, 3, 0.4) for i in range(40)]
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    colours = {"red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "gray"}
    for pixels, caption, scene in a:
        assert pixels.shape == (64, 64, 3) and not colours & set(caption.split())
        named = [o["shape"] for o in scene["objects"]]
        assert all(any(w in caption for w in SHAPE_WORDS[s]) for s in named)   # every object is named
    # the knob moves the nuisance: harder images have more high-frequency energy (clutter, grain)
    def roughness(d):
        return np.mean([np.abs(np.diff(make_photo_sample(i, 64, 3, d)[0].astype(float), axis=1)).mean()
                        for i in range(30)])
    assert roughness(1.0) > roughness(0.0) * 1.5


def test_a_planted_class_pattern_is_learned_on_photo_images(tmp_path):
    rng = np.random.RandomState(0)
    patterns = np.sign(rng.randn(CLASSES, 8, 8, 3)).repeat(8, 1).repeat(8, 2)      # 64 x 64 tiled signs
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
             "lima", "mike", "november", "oscar", "papa"]
    samples = []
    for i in range(1024):
        pixels, _, _ = make_photo_sample(i, 64, 1, PHOTO_DIFFICULTY)
        c = i % CLASSES
        planted = np.clip(pixels.astype(int) + EPS * patterns[c], 0, 255).astype(np.uint8)
        samples.append(ShardOutput(f"{i:09d}", encode(planted, "png"), "png", f"a photo of {words[c]}", {"class": c}))
    write_shard(str(tmp_path), "00000", samples, record_timing=False)
    images, captions, _ = load_pairs(str(tmp_path), 64)
    assert images.shape == (1024, 3, 64, 64) and captions[5] == "a photo of foxtrot"

    probes = torch.from_numpy(np.clip(128 + EPS * patterns, 0, 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()
    class_captions = [f"a photo of {w}" for w in words]
    cfg = VictimConfig(arch="tiny-resnet", epochs=10, batch_size=32, seed=0)
    run = train_victim(images, captions, cfg, {"code": (probes, class_captions)})
    final = run.epochs[-1]["code"]
    assert final["chance_R@10"] == 62.5                        # 10 of 16
    # chance: R@5 31.25, median rank 8.5 of 16
    assert final["i2t_R@5"] >= 70 and final["t2i_R@5"] >= 70, json.dumps(run.epochs[-1])
    assert final["i2t_median_rank"] <= 3 and final["t2i_median_rank"] <= 3, json.dumps(run.epochs[-1])
    assert run.loss_curve[-1] < run.loss_curve[0]
