"""Public stand-in CLIPs: open_clip models pretrained here on the generated web corpus.

A data owner's threat is a public pretrained CLIP fine-tuned on their pairs. No public weights
can be fetched on a machine without internet, so the fine-tuning regime makes its own: two
model families (a ViT and a ModifiedResNet), each described by an open_clip model-config JSON
and pretrained from scratch on ``web_corpus`` pairs (public shapes only, alt-text-like
captions). The outputs are what a user would pass for a real checkpoint: ``NAME.json`` (the
model config, loaded with ``open_clip.add_model_config``) and ``NAME.pt`` (``{"state_dict": ...}``).

The same settings and seed give the same bytes on one CPU type (one thread, seeded order); another
CPU's float kernels can differ in the last bits, so a rebuild elsewhere is a close copy, not the
same bytes. A finished model is cached under a folder named by its settings' hash: a second call
only reads it.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch

from ..data.demo_data import sample_for
from ..engine.surrogate import PROJECT_MODELS, save_checkpoint
from .victim import VictimConfig, train_victim


# the public stand-ins: open_clip model configs (the demo's public-test in mempipe/model_configs; the
# benchmarks' A, B, C in mempipe_research/model_configs, registered by mempipe_research.models)
def public_config(name: str) -> dict:
    """A public stand-in's open_clip model config, from open_clip's registry: the package's own
    (``public-test``, the demo's), or one a caller registered (the benchmarks' A, B, C)."""
    config = open_clip.get_model_config(name) if name.startswith("public-") else None
    if config is None:
        raise ValueError(f"unknown public model {name!r}: register its open_clip model config first "
                         f"(the package has {[m for m in PROJECT_MODELS if m.startswith('public-')]})")
    return config


def corpus(count: int, size: int, seed: int, first_index: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``count`` web-corpus pairs as an N x 3 x S x S uint8 tensor and their captions."""
    images, captions = np.empty((count, size, size, 3), dtype=np.uint8), []
    for i in range(count):
        images[i], caption, _ = sample_for("web", first_index + i, size, seed)
        captions.append(caption)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions


def settings(name: str, pairs: int, epochs: int, seed: int, lr: float = 1e-3, batch_size: int = 64) -> dict:
    return {"name": name, "model_config": public_config(name), "pairs": pairs, "epochs": epochs, "seed": seed,
            "lr": lr, "batch_size": batch_size, "corpus": "web", "torch": torch.__version__}


@dataclass(frozen=True)
class Recipe:
    """How a public model is pretrained (the web corpus: ``pairs`` to train on, ``test_pairs`` held out)."""

    pairs: int = 20_000
    epochs: int = 5
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    test_pairs: int = 500


def pretrain(name: str, cache_dir: str, progress=None, **recipe) -> dict:
    """Pretrain (or find in the cache) one public model by ``Recipe(**recipe)``; returns its paths and
    pretraining record."""
    r = Recipe(**recipe)
    pairs, epochs, seed, lr, batch_size, test_pairs = r.pairs, r.epochs, r.seed, r.lr, r.batch_size, r.test_pairs
    spec = settings(name, pairs, epochs, seed, lr, batch_size)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) / f"{name}-{digest}"
    paths = {"model_config": str(folder / f"{name}.json"), "checkpoint": str(folder / f"{name}.pt"),
             "record": str(folder / "pretrain.json")}
    if os.path.exists(paths["record"]):
        return {**json.loads(Path(paths["record"]).read_text()), **paths, "cached": True}
    folder.mkdir(parents=True, exist_ok=True)
    config = public_config(name)
    Path(paths["model_config"]).write_text(json.dumps(config, indent=2))
    size, context = config["vision_cfg"]["image_size"], config["text_cfg"]["context_length"]
    started = time.time()
    images, captions = corpus(pairs, size, seed)
    test_images, test_captions = corpus(test_pairs, size, seed, first_index=5_000_000)
    cfg = VictimConfig(arch=name, image_size=size, context_length=context, epochs=epochs, batch_size=batch_size,
                       lr=lr, seed=seed, model_config=paths["model_config"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # one thread: the same bytes for the same seed
    try:
        run = train_victim(images, captions, cfg, {"web_test": (test_images, test_captions)}, progress=progress,
                           keep_model=True)
    finally:
        torch.set_num_threads(threads)
    save_checkpoint(run.model, paths["checkpoint"] + ".tmp")
    os.replace(paths["checkpoint"] + ".tmp", paths["checkpoint"])
    sha = hashlib.sha256(Path(paths["checkpoint"]).read_bytes()).hexdigest()
    record = {"settings": spec, "settings_hash": digest, "seconds": round(time.time() - started, 1),
              "loss_curve": run.loss_curve, "web_test": run.epochs[-1]["web_test"],
              "web_test_before": run.zero_shot["web_test"], "checkpoint_sha256": sha}
    Path(paths["record"]).write_text(json.dumps(record, indent=2))   # last: marks the cache entry complete
    return {**record, **paths, "cached": False}


def write_local_dir(public: dict, folder: str | Path, mean: tuple | None = None, std: tuple | None = None) -> str:
    """A pretrained model as open_clip's ``local-dir:`` folder (what a hub download holds):
    ``open_clip_config.json`` (model and preprocess config: CLIP's normalisation unless ``mean`` and
    ``std`` say otherwise) and ``open_clip_pytorch_model.bin``. Returns its name, ``local-dir:FOLDER``."""
    folder = Path(folder)
    if not (folder / "open_clip_pytorch_model.bin").exists():
        config = json.loads(Path(public["model_config"]).read_text())
        state = torch.load(public["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
        save_local_dir(state, open_clip_config(config, mean, std), folder)
    return f"local-dir:{folder}"


def open_clip_config(model_cfg: dict, mean: tuple | None = None, std: tuple | None = None) -> dict:
    """The ``open_clip_config.json`` of a local-dir folder: the model config and its preprocessing."""
    from ..engine.surrogate import CLIP_MEAN, CLIP_STD

    return {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(mean or CLIP_MEAN), "std": list(std or CLIP_STD),
                                                       "interpolation": "bicubic", "resize_mode": "shortest"}}


def save_local_dir(state_dict: dict, config: dict, folder: str | Path) -> str:
    """Weights and an ``open_clip_config.json`` as a ``local-dir:`` folder (the weights renamed into
    place last, so a folder with weights is complete). Returns its name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, str(folder / "open_clip_pytorch_model.bin.partial"))
    os.replace(folder / "open_clip_pytorch_model.bin.partial", folder / "open_clip_pytorch_model.bin")
    return f"local-dir:{folder}"


# the demo's stand-in: a tiny open_clip model pretrained on the web corpus in seconds (16 px, 24 tokens)
DEMO_MODEL = {"name": "public-test", "pairs": 2048, "epochs": 4, "test_pairs": 64}


def demo_model(folder: str | Path) -> str:
    """The demo's public stand-in as a ``local-dir:`` folder (pretrained once, then cached there)."""
    spec = dict(DEMO_MODEL)
    public = pretrain(spec.pop("name"), str(Path(folder) / "pretraining"), **spec)
    return write_local_dir(public, Path(folder) / "model")
