"""The thief regime: a real trainer (open_clip_train) fine-tunes public models on native-size shards.

A data owner cannot name the thief's checkpoint nor its training transform. Here the thief runs
``python -m open_clip_train.main`` with its own default training transform (random resized crop,
scale 0.9-1, bicubic) on the owner's shards, whose images are stored at 64 px while every public
model sees 32 px: the thief's resize and crop never line up with the noise grid. Victims are
the public stand-ins A (ViT) and B (ModifiedResNet), which the owner may use as surrogates, and
C (an EfficientNet with another text tower, pretrained on a corpus of another seed), which is
never a surrogate: the held-out family.

Every number is a fine-tuning gain: R@10 of the fine-tuned checkpoint minus R@10 of the same
public model (zero-shot), both measured by the project's evaluator on the owner's clean test
split (500 pairs, 'resize + centre crop' to 32 px, as open_clip's evaluation transform), on clean
test captions and on test captions with 3 random words in front. open_clip_train's own
validation (``--val-data``, the same split) is recorded beside it for every run.

Order, so that nothing protected can move the setting: ``--calibrate`` (clean and random-words
rows only), ``--freeze`` (judges them: valid where clean gains at least 15 R@10 points in both
directions; writes the frozen file), then ``--protect`` and ``--rows``, which refuse to run
without the frozen file. ``--report`` joins the partial row files.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

from mempipe_research.report import differs, stats  # noqa: E402
from mempipe.data.demo_data import write_demo_data  # noqa: E402
from mempipe.engine import preset  # noqa: E402
from mempipe.engine.mem import Given, protect_unit  # noqa: E402
from mempipe.engine.text import decode_trigger  # noqa: E402
from mempipe.engine.surrogate import build_model, model_config_sizes  # noqa: E402
from mempipe.evaluation.datasets import load_pairs, prefix_random_words  # noqa: E402
from mempipe.evaluation.public_models import pretrain, write_local_dir  # noqa: E402
from mempipe.evaluation.victim import embed, retrieval_metrics, tokens_for  # noqa: E402
from mempipe.io.images import apply_noise_native, decode_rgb, encode  # noqa: E402
from mempipe.io.shards import iter_shard  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402
import mempipe_research.models  # noqa: E402,F401  (registers the public stand-ins A, B, C)
from mempipe_research.owner_data import OWNER as OWNER_STYLE  # noqa: E402

WORK = ROOT / "bench" / "work" / "thief"
RESULTS = ROOT / "bench" / "results"
FROZEN = RESULTS / "thief_frozen.json"
# every protected set's record (time per sample, max |delta|, PSNR), kept beside the results: the sets
# themselves live in bench/work, which a fresh checkout does not have
PROTECTION = RESULTS / "partial" / "thief_protection.json"
REPORT = RESULTS / "effectiveness_thief.json"
OWNER = {"train": 8000, "test": 500, "size": 64, "seed": 0, "style": "owner"}
PUBLIC = {"A": ("public-vit", {}), "B": ("public-resnet", {}), "C": ("public-efficientnet", {"seed": 1})}
PRETRAIN = {"pairs": 20_000, "epochs": 5, "seed": 0}
# the thief's fine-tune: the previous regime's frozen strength (lr 1e-3, 10 epochs, batch 32, 8,000 pairs)
THIEF = {"lr": 1e-3, "epochs": 10, "batch_size": 32, "wd": 0.1, "warmup_epochs": 0.5}
CLEAN_GAIN_MIN = 15.0
SEEDS = 3

# protection: every optimised method uses frozen pretrained surrogates (no surrogate steps), 5 rounds of
# 4 PGD steps of 1 level, eps 8 levels; "crop": the thief's transform in the loop at the stored 64 px
ENGINE = {"outer_iters": 5, "pgd_steps": 4, "train_steps": 0, "unit_train_steps": 0, "hotflip_iters": 2,
          "candidates": 6, "epsilon": 8, "alpha": 1, "batch_size": 128}
CROP = {"noise_size": 64, "transform": "crop", "crop_scale": 0.5}
VARIANTS = {
    "random": ({"method": "random", "noise_size": 64}, ()),
    "em-A": ({"method": "em"}, ("A",)),                      # noise at 32 px, upsampled onto the 64 px image
    "em-A-crop": ({"method": "em", **CROP}, ("A",)),
    "em-AB-crop": ({"method": "em", **CROP}, ("A", "B")),
    "memj-AB-crop": ({"method": "mem", "trigger_len": 3, "pgd_objective": "joint", **CROP}, ("A", "B")),
    # the ensemble's worst member's loss minimised, not the mean
    "em-AB-crop-max": ({"method": "em", "ensemble_reduce": "max", **CROP}, ("A", "B")),
    # one error-minimising noise per k-means cluster of a unit (20 clusters of ~25 pairs): a pattern
    # shared by pairs of like captions, a shortcut any model may pick up (the Unlearnable Clusters idea)
    "em-AB-cluster": ({"method": "em", "noise_scope": "cluster", **CROP}, ("A", "B")),
    # a self-ensemble (SEP): A and three checkpoints along A's own fine-tune on the owner's clean pairs
    # (the project's fast victim at the thief's lr), so the noise is error-minimising along the way a
    # thief's fine-tune goes, not only at its start
    "em-A-self": ({"method": "em"}, ("A", "A-self")),
    # model-free: one +-eps 4 x 4 block pattern per cluster of like captions, the clusters drawn over the
    # whole owner set (below), so that like captions anywhere carry one pattern; A only finds the clusters
    "pattern-text": ({"method": "pattern", "noise_scope": "cluster", "cluster_features": "text", "noise_size": 64},
                     ("A",)),
    # its control: the same kind of pattern, one per image, nothing shared (as much visible change)
    "pattern-sample": ({"method": "pattern", "noise_scope": "sample", "noise_size": 64}, ("A",)),
}
# variants clustered once over all 8,000 pairs (k-means on the first surrogate's caption features),
# not inside each 500-pair unit: clusters of ~25 like captions
GLOBAL_CLUSTERS = {"pattern-text": 320}
SELF_ENSEMBLE = {"epochs": THIEF["epochs"], "lr": THIEF["lr"], "checkpoints": 3}
# row -> (images from, captions from, what it is); the training shards are written once per row
ROWS = {
    "clean": ("clean", "clean", "reference: the owner's clean pairs"),
    "random-words": ("clean", "random-words", "control: 3 random words per caption, clean images"),
    "random": ("random", "clean", "control: uniform noise in [-eps, eps] at 64 px, original captions"),
    "em-A": ("em-A", "clean", "EM against A at A's 32 px input, upsampled to 64 px"),
    "em-A-crop": ("em-A-crop", "clean", "EM against A, the thief's crop in the loop, at 64 px"),
    "em-AB-crop": ("em-AB-crop", "clean", "EM against the ensemble A+B, crop in the loop, at 64 px"),
    "em-AB-crop-max": ("em-AB-crop-max", "clean", "EM against A+B's worst member (not the mean), crop in the loop"),
    "memj-AB-crop": ("memj-AB-crop", "memj-AB-crop", "MEM-3 joint objective, A+B, crop in the loop: noise and trigger"),
    "memj-AB-crop+orig": ("memj-AB-crop", "clean", "memj-AB-crop's images with the original captions restored"),
    "em-AB-cluster": ("em-AB-cluster", "clean", "EM, one noise per cluster of ~25 like pairs, A+B, crop in the loop"),
    "em-A-self": ("em-A-self", "clean", "EM against A and 3 checkpoints along A's fine-tune on the owner's pairs"),
    "pattern-text": ("pattern-text", "clean", "model-free: a +-eps 4x4 block pattern per cluster of ~25 like captions"),
    "pattern-sample": ("pattern-sample", "clean", "control: a +-eps 4x4 block pattern per image, nothing shared"),
}
CALIBRATION_ROWS = ("clean", "random-words")


def _jpeg(image, quality: int):
    from PIL import Image

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _bits(image, bits: int):
    from PIL import Image

    shift = 8 - bits
    return Image.fromarray(((np.asarray(image) >> shift) << shift).astype(np.uint8))


def _blur(image):
    from PIL import ImageFilter

    return image.filter(ImageFilter.GaussianBlur(radius=1))


# a thief's countermeasures (Image Shortcut Squeezing and the usual re-encodings), applied to the stored
# training images before the thief trains; the test split stays clean. Row "X@name": row X's shards under it
COUNTERMEASURES = {
    "jpeg75": lambda im: _jpeg(im, 75), "jpeg50": lambda im: _jpeg(im, 50),
    "gray": lambda im: im.convert("L").convert("RGB"),
    "jpeg10bits": lambda im: _jpeg(_bits(im, 3), 10),   # ISS's strongest: 3-bit depth, then JPEG 10
    "blur": _blur,
}
CONTROL_OF = {"em-A": "random", "pattern-text": "pattern-sample", "pattern-sample": "random", "em-AB-cluster": "random", "em-A-self": "random", "em-A-crop": "random", "em-AB-crop": "random", "em-AB-crop-max": "random", "memj-AB-crop+orig": "random",
              "memj-AB-crop": "random-words"}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def meta() -> dict:
    return {"commit": commit(), "command": " ".join(["bench/thief_regime.py", *sys.argv[1:]]),
            "torch": torch.__version__, "owner": OWNER, "public": {k: v[0] for k, v in PUBLIC.items()},
            "thief": THIEF, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def rel(path) -> str:
    return str(Path(path).resolve().relative_to(ROOT.resolve())) if str(Path(path).resolve()).startswith(str(ROOT.resolve())) else str(path)


# ---------------------------------------------------------------- data and models

def owner_data() -> dict[str, str]:
    data = WORK / "owner64"
    if not (data / "test").exists():
        write_demo_data(str(data), OWNER["train"], OWNER["test"], size=OWNER["size"], seed=OWNER["seed"],
                        style=OWNER_STYLE)
    return {"train": str(data / "train"), "test": str(data / "test")}


def public_model(letter: str) -> dict:
    arch, overrides = PUBLIC[letter]
    return pretrain(arch, str(ROOT / "bench" / "work" / "public_models"), **{**PRETRAIN, **overrides})


def public_build(letter: str) -> dict:
    """Which build of a public model a row fine-tuned: its settings folder (the recipe and the torch
    version) and its checkpoint's hash. Rows without it ran on the first builds (torch 2.14.0)."""
    model = public_model(letter)
    return {"folder": Path(model["checkpoint"]).parent.name, "checkpoint_sha256": model["checkpoint_sha256"]}


def local_dir(letter: str) -> Path:
    """The public model as open_clip's ``local-dir:`` folder, what a thief downloads from a hub."""
    model = public_model(letter)
    folder = WORK / "local_dirs" / f"{letter}-{model['checkpoint_sha256'][:12]}"
    write_local_dir(model, folder)
    return folder


def load_public(letter: str, checkpoint: str | None = None):
    model = public_model(letter)
    sizes = model_config_sizes(model["model_config"])
    return build_model(sizes["arch"], sizes["image_size"], sizes["context_length"],
                       checkpoint=checkpoint or model["checkpoint"], model_config=model["model_config"]).eval()


def self_ensemble(letter: str) -> list:
    """Checkpoints along public model ``letter``'s fine-tune on the owner's clean pairs, saved by
    ``mempipe eval --save-checkpoints`` as local-dir folders (made once, then cached)."""
    from mempipe.engine.surrogate import build_named

    out = WORK / f"self-{letter}"
    if not (out / "metrics.json").exists():
        data = owner_data()
        command = [sys.executable, "-m", "mempipe.cli", "eval", "--train", data["train"], "--test", data["test"],
                   "--init", f"local-dir:{local_dir(letter)}", "--epochs", str(SELF_ENSEMBLE["epochs"]),
                   "--lr", str(SELF_ENSEMBLE["lr"]), "--batch-size", str(THIEF["batch_size"]),
                   "--save-checkpoints", str(SELF_ENSEMBLE["checkpoints"]),
                   "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        subprocess.run(command, env=env, check=True, capture_output=True)
    folders = sorted((out / "checkpoints").iterdir(), key=lambda p: int(p.name.split("_")[1]))
    return [build_named(f"local-dir:{f}").eval() for f in folders]


def surrogate_models(names: tuple[str, ...]) -> list:
    """The surrogates of a variant: public letters, and ``X-self`` for X's self-ensemble checkpoints."""
    models = []
    for name in names:
        models += self_ensemble(name.removesuffix("-self")) if name.endswith("-self") else [load_public(name)]
    return models


# ---------------------------------------------------------------- shards

def shard_urls(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).glob("*.tar"))


def write_shard(path: Path, samples: list[tuple[str, np.ndarray, str, dict]]) -> None:
    """A webdataset shard as img2dataset lays it out: {key}.png, {key}.txt, {key}.json."""
    tmp = path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w") as tar:
        for key, pixels, caption, info in samples:
            for ext, data in (("png", encode(pixels, "png")), ("txt", caption.encode()),
                              ("json", json.dumps(info).encode())):
                member = tarfile.TarInfo(f"{key}.{ext}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    os.replace(tmp, path)


def read_shard(url: str, size: int | None = None):
    """(N x 3 x S x S uint8 at native size or ``size``, captions, keys) of one shard."""
    images, captions, keys = load_pairs(url, size or OWNER["size"])
    return images, captions, keys


def variant_seed(name: str) -> tuple[str, int]:
    """``em-A~p1`` is variant ``em-A`` protected again with protection seed 1 (``em-A`` is seed 0)."""
    base, _, seed = name.partition("~p")
    if base not in VARIANTS or (seed and not seed.isdigit()):
        raise SystemExit(f"unknown variant {name!r}: variants {list(VARIANTS)}, optionally ~pN (protection seed)")
    return base, int(seed or 0)


def engine_config(overrides: dict, surrogates: tuple[str, ...]):
    """The engine's settings for a variant: the regime's rounds and steps, sized for its first surrogate."""
    first = public_model(surrogates[0]) if surrogates else public_model("A")
    return preset("finetune").with_overrides(checkpoint=first["checkpoint"], model_config=first["model_config"],
                                             **model_config_sizes(first["model_config"]), **ENGINE, **overrides)


# what each option of the thief's transform in the loop costs, in one run on the same pairs
TRANSFORM_COST = {
    "resize: noise at A's 32 px input": ({"method": "em"}, ("A",)),
    "crop (+ flip)": ({"method": "em", **CROP}, ("A",)),
    "crop + differentiable JPEG (p 0.5)": ({"method": "em", **CROP, "transform_jpeg": 0.5}, ("A",)),
    "crop + grayscale (p 0.5)": ({"method": "em", **CROP, "transform_gray": 0.5}, ("A",)),
    "crop, ensemble A+B, mean": ({"method": "em", **CROP}, ("A", "B")),
    "crop, ensemble A+B, worst": ({"method": "em", "ensemble_reduce": "max", **CROP}, ("A", "B")),
    "MEM-joint, crop, A+B (the default preset's method)": VARIANTS["memj-AB-crop"],
}


def transform_cost(pairs: int = 256, passes: int = 2) -> dict:
    """Seconds per sample of each option on the owner's first ``pairs`` pairs (one thread; the fastest of
    ``passes`` passes, the options interleaved so that a busy moment does not land on one option)."""
    url = shard_urls(owner_data()["train"])[0]
    native, captions, _ = read_shard(url)
    native, captions = native[:pairs], captions[:pairs]
    options = {}   # models, settings and input of each option, made once, outside the timed passes
    for label, (overrides, surrogates) in TRANSFORM_COST.items():
        members, cfg = surrogate_models(surrogates), engine_config(overrides, surrogates)
        work = native if cfg.stored_size == OWNER["size"] else read_shard(url, cfg.image_size)[0][:pairs]
        options[label] = (members, cfg, work)
    seconds: dict[str, list[float]] = {label: [] for label in TRANSFORM_COST}
    for _ in range(passes):
        for label, (members, cfg, work) in options.items():
            started = time.perf_counter()
            protect_unit(work, captions, cfg, given=Given(surrogate=members[0], ensemble=members[1:]))
            seconds[label].append(time.perf_counter() - started)
            print(f"{label}: {seconds[label][-1]:.1f}s", flush=True)
    base = min(seconds["resize: noise at A's 32 px input"])
    return {"pairs": pairs, "passes": passes, "threads": torch.get_num_threads(), "engine": ENGINE,
            "options": {label: {"seconds_per_sample": round(min(s) / pairs, 4), "vs_resize": round(min(s) / base, 2),
                                "seconds": [round(x, 1) for x in s]} for label, s in seconds.items()}}


def protect_variant(name: str) -> dict:
    """Protect the owner's training shards with one variant (noise and, for MEM, trigger captions);
    shard by shard, units of 500 pairs. Writes ``sets/NAME/images`` (original captions) and, with a
    trigger, ``sets/NAME/triggered``. Returns its record (seconds, max |delta|, PSNR)."""
    base, protect_seed = variant_seed(name)
    overrides, surrogates = VARIANTS[base]
    target = WORK / "sets" / name
    record_path = target / "record.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    members = surrogate_models(surrogates)
    cfg = engine_config(overrides, surrogates)
    started, deltas, psnrs = time.time(), [], []
    clusters = whole_set_clusters(base, members, cfg, protect_seed)
    for sub in ("images", "triggered") if cfg.uses_trigger else ("images",):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for i, url in enumerate(shard_urls(owner_data()["train"])):
        native, captions, keys = read_shard(url)
        work = native if cfg.stored_size == OWNER["size"] else read_shard(url, cfg.image_size)[0]
        result = protect_unit(work, captions, cfg.with_overrides(seed=i + 1000 * protect_seed, pattern_seed=protect_seed),
                              given=Given(surrogate=members[0] if members else None, ensemble=members[1:],
                                          clusters=None if clusters is None else clusters[url]))
        triggers = [""] * len(keys)
        if cfg.uses_trigger:
            triggers = [decode_trigger(row) for row in result.trigger_ids.tolist()]
        images, triggered = [], []
        for j, key in enumerate(keys):
            original = native[j].permute(1, 2, 0).numpy()
            pixels = apply_noise_native(original, result.noise[j].permute(1, 2, 0).numpy(), cfg.epsilon)
            delta = int(np.abs(pixels.astype(np.int16) - original.astype(np.int16)).max())
            if delta > cfg.epsilon:
                raise AssertionError(f"{key}: |delta| {delta} over epsilon")
            deltas.append(delta)
            mse = float(np.mean((pixels.astype(np.float64) - original) ** 2))
            psnrs.append(99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))
            images.append((key, pixels, captions[j], {"variant": name}))
            if cfg.uses_trigger:
                triggered.append((key, pixels, f"{triggers[j]} {captions[j]}", {"variant": name, "trigger": triggers[j]}))
        write_shard(target / "images" / Path(url).name, images)
        if triggered:
            write_shard(target / "triggered" / Path(url).name, triggered)
        print(f"{name}: shard {i} done ({time.time() - started:.0f}s)", flush=True)
    record = {"variant": name, "protect_seed": protect_seed, "surrogates": list(surrogates), "config": {**ENGINE, **overrides},
              "whole_set_clusters": GLOBAL_CLUSTERS.get(base),
              "seconds": round(time.time() - started, 1), "seconds_per_sample": round((time.time() - started) / OWNER["train"], 4),
              "max_delta": max(deltas), "psnr_mean": round(float(np.mean(psnrs)), 3)}
    record_path.write_text(json.dumps(record, indent=1))
    protection_records()   # kept beside the results
    return record


def protection_records() -> dict[str, dict]:
    """The kept records, and those of sets protected here that are not kept yet (then kept too). A kept
    record stays: it is the first protection of its set, and a set made again keeps its first cost."""
    kept = json.loads(PROTECTION.read_text())["sets"] if PROTECTION.exists() else {}
    local = {path.parent.name: json.loads(path.read_text()) for path in sorted((WORK / "sets").glob("*/record.json"))}
    records = dict(sorted({**local, **kept}.items()))
    if records.keys() != kept.keys():
        write_result(PROTECTION, {"meta": meta(), "sets": records})
    return records


def whole_set_clusters(base: str, members: list, cfg, seed: int) -> dict[str, torch.Tensor] | None:
    """For a variant of GLOBAL_CLUSTERS: k-means over the caption features of every training pair
    (the first surrogate's), returned as each shard's cluster ids; None for the others."""
    from mempipe.engine.clusters import kmeans
    from mempipe.engine.mem import sample_features

    if base not in GLOBAL_CLUSTERS:
        return None
    urls = shard_urls(owner_data()["train"])
    features = []
    for url in urls:
        native, captions, _ = read_shard(url)
        features.append(sample_features(members[0], native, captions, cfg))
    ids, _ = kmeans(torch.cat(features), GLOBAL_CLUSTERS[base], seed)
    sizes = np.cumsum([0] + [len(f) for f in features])
    return {url: ids[sizes[i]:sizes[i + 1]] for i, url in enumerate(urls)}


def random_words_shards() -> str:
    """The control's shards: the owner's clean images, 3 fresh random words before every caption."""
    target = WORK / "sets" / "random-words" / "images"
    if not (target / "done").exists():
        target.mkdir(parents=True, exist_ok=True)
        for i, url in enumerate(shard_urls(owner_data()["train"])):
            native, captions, keys = read_shard(url)
            captions = prefix_random_words(captions, 3, seed=1000 + i)
            write_shard(target / Path(url).name, [(k, native[j].permute(1, 2, 0).numpy(), c, {})
                                                  for j, (k, c) in enumerate(zip(keys, captions))])
        (target / "done").write_text("")
    return str(target)


def countermeasure_shards(row: str, name: str) -> str:
    """Row ``row``'s training shards with countermeasure ``name`` applied to every image."""
    from PIL import Image

    source = row_shards(row)
    target = WORK / "sets" / f"{row}@{name}"
    if not (target / "done").exists():
        target.mkdir(parents=True, exist_ok=True)
        for url in shard_urls(source):
            samples = []
            for sample in sorted(iter_shard(url), key=lambda s: s.key):   # the package's shard reader
                image = Image.fromarray(decode_rgb(sample.image)[0])
                samples.append((sample.key, np.asarray(COUNTERMEASURES[name](image)), sample.caption, {}))
            write_shard(target / Path(url).name, samples)
        (target / "done").write_text("")
    return str(target)


def row_label(row: str) -> tuple[str, str | None]:
    """Row ``X~pN@C``: row X, its images protected with protection seed N, countermeasure C applied."""
    base, _, countermeasure = row.partition("@")
    base, _, protect_seed = base.partition("~p")
    if (base not in ROWS or (countermeasure and countermeasure not in COUNTERMEASURES)
            or (protect_seed and not (protect_seed.isdigit() and ROWS[base][0] in VARIANTS))):
        raise SystemExit(f"unknown row {row!r}: rows {list(ROWS)}, optionally ~pN (protection seed, "
                         f"optimised rows) and @{'|@'.join(COUNTERMEASURES)}")
    return base, countermeasure or None


def protect_seed(row: str) -> int:
    seed = row.partition("@")[0].partition("~p")[2]
    return int(seed or 0)


def pooled(row: str) -> str:
    """The row without its protection seed: ``em-A~p1@jpeg75`` -> ``em-A@jpeg75``."""
    head, at, countermeasure = row.partition("@")
    return head.partition("~p")[0] + at + countermeasure


def row_images(row: str) -> str:
    """The protected set a row's images come from, with its protection seed."""
    base, _, protect_seed = row.partition("@")[0].partition("~p")
    images_from = ROWS[base][0]
    return f"{images_from}~p{protect_seed}" if protect_seed else images_from


def row_shards(row: str) -> str:
    countermeasure = row_label(row)[1]
    if countermeasure:
        return countermeasure_shards(row.partition("@")[0], countermeasure)
    base = row_label(row)[0]
    _, captions_from, _ = ROWS[base]
    images_from = row_images(row)
    if row == "clean":
        return owner_data()["train"]
    if row == "random-words":
        return random_words_shards()
    sub = "triggered" if captions_from == ROWS[base][0] else "images"
    return str(WORK / "sets" / images_from / sub)


# ---------------------------------------------------------------- the thief and the evaluator

_TESTS: dict = {}


def test_split(size: int) -> dict:
    """The clean test split at the model's input (open_clip's evaluation view), clean and prefixed captions."""
    if size not in _TESTS:
        images, captions, _ = load_pairs(owner_data()["test"], size)
        _TESTS[size] = {"clean": (images, captions), "prefixed": (images, prefix_random_words(captions, 3, seed=12345))}
    return _TESTS[size]


def evaluate_model(model) -> dict:
    context = model.context_length
    out = {}
    for split, (images, captions) in test_split(model.input_size).items():
        out[split] = retrieval_metrics(*embed(model, images, tokens_for(captions, context), "cpu"))
    return out


def open_clip_train(train_dir: str, letter: str, seed: int, name: str) -> dict:
    """Fine-tune public model ``letter`` on the shards under ``train_dir`` with open_clip_train (its
    default training transform), then evaluate the last checkpoint. One thread."""
    logs = WORK / "runs"
    run_dir = logs / name
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    urls = shard_urls(train_dir)
    steps_per_epoch = OWNER["train"] // THIEF["batch_size"]
    command = [sys.executable, "-m", "open_clip_train.main", "--model", f"local-dir:{local_dir(letter)}",
               "--train-data", "::".join(urls), "--train-num-samples", str(OWNER["train"]),
               "--dataset-type", "webdataset", "--batch-size", str(THIEF["batch_size"]),
               "--epochs", str(THIEF["epochs"]), "--lr", str(THIEF["lr"]), "--wd", str(THIEF["wd"]),
               "--warmup", str(int(THIEF["warmup_epochs"] * steps_per_epoch)), "--workers", "1",
               "--device", "cpu", "--precision", "fp32", "--save-frequency", str(THIEF["epochs"]),
               "--logs", str(logs), "--name", name, "--seed", str(seed),
               "--val-data", "::".join(shard_urls(owner_data()["test"])), "--val-num-samples", str(OWNER["test"]),
               "--report-to", "", "--log-every-n-steps", "50"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"open_clip_train failed ({done.returncode}): {done.stderr[-3000:]}")
    seconds = round(time.time() - started, 1)
    log_text = (run_dir / "out.log").read_text()
    # the running mean of the loss at the last logged step of each epoch
    losses: dict[int, float] = {}
    for epoch, mean in re.findall(r"Train Epoch: (\d+) \[.*?Loss: [\d.]+ \(([\d.]+)\)", log_text):
        losses[int(epoch)] = float(mean)
    own_val = [json.loads(line) for line in (run_dir / "checkpoints" / "results.jsonl").read_text().splitlines()]
    checkpoint = run_dir / "checkpoints" / f"epoch_{THIEF['epochs']}.pt"
    final = evaluate_model(load_public(letter, str(checkpoint)))
    checkpoint.unlink()   # 1 MB each, and nothing reads it again
    return {"final": final, "seconds": seconds, "loss_curve": [losses[e] for e in sorted(losses)],
            "open_clip_val": [{k: v for k, v in e.items() if "R@10" in k or k in ("epoch", "clip_val_loss")}
                              for e in own_val]}


_ZERO: dict = {}


def zero_shot(letter: str) -> dict:
    if letter not in _ZERO:
        _ZERO[letter] = evaluate_model(load_public(letter))
    return _ZERO[letter]


def gain(final: dict, zero: dict) -> dict:
    return {split: {d: round(final[split][f"{d}_R@10"] - zero[split][f"{d}_R@10"], 2) for d in ("i2t", "t2i")}
            for split in final}


def run_rows(rows: list[str], victims: list[str], seeds: list[int], out: Path) -> None:
    body = json.loads(out.read_text()) if out.exists() else {"meta": meta(), "rows": []}
    done = {(r["row"], r["victim"], r["seed"]) for r in body["rows"]}
    for seed in seeds:
        for victim in victims:
            for row in rows:
                if (row, victim, seed) in done:
                    continue
                train_dir = row_shards(row)
                digest = hashlib.sha256(f"{row}{victim}{seed}{out}".encode()).hexdigest()[:8]
                result = open_clip_train(train_dir, victim, seed, f"{row}-{victim}-{seed}-{digest}")
                zero = zero_shot(victim)
                base, countermeasure = row_label(row)
                what = ROWS[base][2] + (f"; the thief applies {countermeasure} first" if countermeasure else "")
                entry = {"row": row, "victim": victim, "seed": seed, "what": what, "zero_shot": zero,
                         **result, "gain": gain(result["final"], zero), "commit": commit(),
                         "public_model": public_build(victim)}
                body = json.loads(out.read_text()) if out.exists() else {"meta": meta(), "rows": []}
                body["rows"].append(entry)
                out.parent.mkdir(parents=True, exist_ok=True)
                write_result(out, body)
                g = entry["gain"]
                last_val = result["open_clip_val"][-1] if result["open_clip_val"] else {}
                print(f"{victim} {row:20s} seed {seed}: gain clean {g['clean']['i2t']}/{g['clean']['t2i']} prefixed "
                      f"{g['prefixed']['i2t']}/{g['prefixed']['t2i']} open_clip val R@10 "
                      f"{last_val.get('image_to_text_R@10')}/{last_val.get('text_to_image_R@10')} "
                      f"loss {result['loss_curve'][-1:]} ({result['seconds']}s)", flush=True)


def fast_victim_rows(rows: list[str], victims: list[str], out: Path) -> None:
    """The project's own fast victim (``mempipe eval --init``: the same public model, the same lr and
    epochs, no crop, images resized to its input) on the same training shards as open_clip_train's
    rows: what the search for methods runs, checked against the real trainer."""
    body = json.loads(out.read_text()) if out.exists() else {"meta": meta(), "rows": []}
    done = {(r["row"], r["victim"]) for r in body["rows"]}
    data = owner_data()
    for victim in victims:
        for row in rows:
            if (row, victim) in done:
                continue
            target = WORK / "fast" / f"{row}-{victim}"
            command = [sys.executable, "-m", "mempipe.cli", "eval", "--train", row_shards(row), "--test", data["test"],
                       "--init", f"local-dir:{local_dir(victim)}", "--epochs", str(THIEF["epochs"]),
                       "--lr", str(THIEF["lr"]), "--batch-size", str(THIEF["batch_size"]), "--out", str(target)]
            started = time.time()
            subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, check=True,
                           capture_output=True)
            metrics = json.loads((target / "metrics.json").read_text())
            entry = {"row": row, "victim": victim, "gain": metrics["gain_R@10"], "seconds": round(time.time() - started, 1),
                     "commit": commit(), "victim_config": {k: metrics["victim"][k] for k in ("lr", "epochs", "batch_size")}}
            body = json.loads(out.read_text()) if out.exists() else {"meta": meta(), "rows": []}
            body["rows"].append(entry)
            write_result(out, body)
            print(f"fast victim {victim} {row}: gain {entry['gain']['clean']} ({entry['seconds']}s)", flush=True)


# ---------------------------------------------------------------- freeze and report

def gain_stats(runs: list[dict], split: str) -> dict:
    return {d: stats([r["gain"][split][d] for r in runs]) for d in ("i2t", "t2i")}


def freeze(parts: list[Path]) -> dict:
    runs = [r for p in parts for r in json.loads(p.read_text())["rows"]]
    if any(r["row"] not in CALIBRATION_ROWS for r in runs):
        raise SystemExit("the freeze reads calibration rows only (clean, random-words)")
    table = {}
    for victim in sorted({r["victim"] for r in runs}):
        clean = [r for r in runs if (r["victim"], r["row"]) == (victim, "clean")]
        control = [r for r in runs if (r["victim"], r["row"]) == (victim, "random-words")]
        cg = gain_stats(clean, "clean")
        table[victim] = {"clean_gain": cg, "control_gain": gain_stats(control, "clean") if control else None,
                         "seeds": len(clean), "valid_image_noise": all(cg[d]["mean"] >= CLEAN_GAIN_MIN for d in cg)}
    body = {"meta": meta(), "thief": THIEF, "owner": OWNER, "criterion": {"clean_gain_min": CLEAN_GAIN_MIN},
            "table": table, "frozen_at": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs}
    write_result(FROZEN, body)
    return body


def report(parts: list[Path]) -> dict:
    rows = [r for p in parts for r in json.loads(p.read_text())["rows"]]
    frozen = json.loads(FROZEN.read_text())
    rows += [r for r in frozen["runs"] if (r["row"], r["victim"], r["seed"]) not in
             {(x["row"], x["victim"], x["seed"]) for x in rows}]
    protection = protection_records()
    table: dict = {}
    for victim in sorted({r["victim"] for r in rows}):
        table[victim] = {}
        # a row's protection seeds are pooled with its fine-tune seeds: "em-A" and "em-A~p1" are one row
        for label in dict.fromkeys(pooled(r["row"]) for r in rows if r["victim"] == victim):
            runs = [r for r in rows if (r["victim"], pooled(r["row"])) == (victim, label)]
            table[victim][label] = {"what": runs[0]["what"], "seeds": len(runs),
                                    "protect_seeds": sorted({protect_seed(r["row"]) for r in runs}),
                                    **{split: gain_stats(runs, split) for split in ("clean", "prefixed")},
                                    "final_loss": stats([r["loss_curve"][-1] for r in runs]),
                                    "open_clip_val_R@10": {d: stats([100 * r["open_clip_val"][-1][f"{k}_R@10"] for r in runs])
                                                           for d, k in (("i2t", "image_to_text"), ("t2i", "text_to_image"))},
                                    "project_R@10": {d: stats([r["final"]["clean"][f"{d}_R@10"] for r in runs])
                                                     for d in ("i2t", "t2i")}}
        for label, entry in table[victim].items():
            base, countermeasure = row_label(label)
            # a countermeasure's row is measured against clean under the same countermeasure
            clean = table[victim].get(f"clean@{countermeasure}" if countermeasure else "clean")
            if clean:
                entry["share_of_clean"] = {split: {d: round(entry[split][d]["mean"] / clean[split][d]["mean"], 3)
                                                   if clean[split][d]["mean"] > 0 else None for d in ("i2t", "t2i")}
                                           for split in ("clean", "prefixed")}
            control_label = (f"clean@{countermeasure}" if countermeasure and base != "clean"
                             else CONTROL_OF.get(label, ""))
            control = table[victim].get(control_label)
            if control:
                entry["control"] = control_label
                entry["differs_from_control"] = {split: {d: differs(entry[split][d], control[split][d])
                                                         for d in ("i2t", "t2i")} for split in ("clean", "prefixed")}
    builds: dict = {}   # which build of each public model the runs fine-tuned, and how many each
    for r in rows:
        builds.setdefault(r["victim"], Counter())[r.get("public_model", {}).get("folder", "first build (torch 2.14.0)")] += 1
    return {"meta": meta(), "frozen": {k: frozen[k] for k in ("thief", "owner", "criterion", "table", "frozen_at")},
            "builds": builds, "protection": protection, "table": table, "goal": goal(table), "rows": rows}


def goal(table: dict) -> dict:
    """Per victim, the bars (at most 0.20 of clean's gain while random noise keeps at least 0.80, and at
    most 0.40 of clean's under JPEG 75) and each bar's distance, twice: for the image-noise rows, the
    protection that survives a thief who cleans captions, and for the trigger rows, which protect only
    while the captions stay as published (judged beside random words, and with captions cleaned)."""
    out = {}
    for victim, rows in table.items():
        def shares(label, pick):
            values = rows.get(label, {}).get("share_of_clean")
            return None if not values else pick(v for s in values.values() for v in s.values() if v is not None)

        def judged(candidates: list[str]) -> dict:
            best = min(candidates, key=lambda r: shares(r, max) if shares(r, max) is not None else 9, default=None)
            share, random_share = (shares(best, max) if best else None), shares("random", min)
            jpeg = shares(f"{best}@jpeg75", max) if best else None   # against clean under JPEG 75
            return {"best": best, "its_largest_share": share, "random_smallest_share": random_share,
                    "distance_to_0.20": None if share is None else round(share - 0.20, 3),
                    "jpeg75_largest_share": jpeg,
                    "jpeg75_distance_to_0.40": None if jpeg is None else round(jpeg - 0.40, 3),
                    "met": bool(share is not None and share <= 0.20 and (random_share or 0) >= 0.80
                                and jpeg is not None and jpeg <= 0.40)}

        # the image-noise methods: every row with a control, less the controls and the trigger rows
        image_noise = [r for r in rows if r in CONTROL_OF and r not in CONTROL_OF.values()
                       and CONTROL_OF[r] != "random-words"]
        trigger = judged([r for r in rows if CONTROL_OF.get(r) == "random-words"])
        if trigger["best"]:
            trigger["random_words_smallest_share"] = shares("random-words", min)
            trigger["captions_cleaned_largest_share"] = shares(f"{trigger['best']}+orig", max)
        out[victim] = {**judged(image_noise), "with_trigger": trigger}
    return out


def diagnose(sets: list[str], victims: list[str]) -> dict:
    """Why a row protects or not: each public model's contrastive loss (batches of 128, before any
    fine-tuning) on each training set, seen as the thief's transform shows it (open_clip's own
    training transform: random resized crop 0.9-1, bicubic) and as the evaluation view (resize).
    Error-minimising noise that survives the thief lowers the first loss well below clean's."""
    import open_clip
    from PIL import Image

    from mempipe.engine.losses import clip_loss

    out: dict = {}
    torch.manual_seed(0)
    for letter in victims:
        model = load_public(letter)
        _, train_view, eval_view = open_clip.create_model_and_transforms(
            f"local-dir:{local_dir(letter)}")
        out[letter] = {}
        for name in sets:
            urls = shard_urls(row_shards(name))
            losses = {"thief": [], "eval": []}
            for url in urls:
                shard = sorted(iter_shard(url), key=lambda s: s.key)   # the package's shard reader
                keys = [s.key for s in shard]
                images = [Image.fromarray(decode_rgb(s.image)[0]) for s in shard]
                tokens = tokens_for([s.caption for s in shard], model.context_length)
                for start in range(0, len(keys) - 127, 128):
                    batch = slice(start, start + 128)
                    with torch.no_grad():
                        text = model.encode_text(tokens[batch])
                        for view, transform in (("thief", train_view), ("eval", eval_view)):
                            x = torch.stack([transform(im) for im in images[batch]])
                            image = torch.nn.functional.normalize(model.clip.encode_image(x), dim=-1)
                            losses[view].append(float(clip_loss(image, text, model.logit_scale())))
            out[letter][name] = {view: round(float(np.mean(v)), 4) for view, v in losses.items()}
            print(letter, name, out[letter][name], flush=True)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibrate", help="calibration rows to run: clean, random-words or both")
    ap.add_argument("--freeze", help="comma-separated calibration row files -> bench/results/thief_frozen.json")
    ap.add_argument("--protect", help="comma-separated variants to protect (after the freeze)")
    ap.add_argument("--rows", help="comma-separated rows to run (after the freeze)")
    ap.add_argument("--victims", default="A,B,C")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", help="partial row file")
    ap.add_argument("--diagnose", help="comma-separated rows: each public model's loss on their training sets "
                                       "-> bench/results/thief_diagnosis.json")
    ap.add_argument("--transform-cost", action="store_true",
                    help="seconds per sample of each in-the-loop option -> bench/results/thief_transform_cost.json")
    ap.add_argument("--report", help="comma-separated row files -> bench/results/effectiveness_thief.json")
    ap.add_argument("--fast-victim", help="comma-separated rows: the project's fast victim on their shards "
                                          "-> bench/results/partial/thief_fast_victim.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    victims = args.victims.split(",")
    if args.freeze:
        print(json.dumps(freeze([Path(p) for p in args.freeze.split(",")])["table"], indent=1))
        return 0
    if args.diagnose:
        body = {"meta": meta(), "loss": diagnose(args.diagnose.split(","), victims)}
        write_result((RESULTS / "thief_diagnosis.json"), body)
        return 0
    if args.fast_victim:
        fast_victim_rows(args.fast_victim.split(","), victims, Path(args.out or RESULTS / "partial" / "thief_fast_victim.json"))
        return 0
    if args.transform_cost:
        write_result(RESULTS / "thief_transform_cost.json", {"meta": meta(), **transform_cost()})
        return 0
    if args.report:
        body = report([Path(p) for p in args.report.split(",")])
        write_result(REPORT, body)
        print(json.dumps(body["goal"], indent=1))
        return 0
    if args.calibrate:
        rows = args.calibrate.split(",")
        if set(rows) - set(CALIBRATION_ROWS):
            ap.error(f"calibration rows are {CALIBRATION_ROWS}")
        run_rows(rows, victims, seeds, Path(args.out or RESULTS / "partial" / "thief_calibration.json"))
        return 0
    if args.protect:   # protecting informs no setting: allowed before the freeze
        for name in args.protect.split(","):
            print(json.dumps(protect_variant(name)), flush=True)
    if args.rows and not FROZEN.exists():
        raise SystemExit("no frozen setting: run --calibrate and --freeze before any protected row")
    if args.rows:
        rows = args.rows.split(",")
        for row in rows:
            if ROWS[row_label(row)[0]][0] in VARIANTS:
                protect_variant(row_images(row))
        run_rows(rows, victims, seeds, Path(args.out or RESULTS / "partial" / "thief_rows.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
