"""The fit phase: everything a run shares, learned once on a bounded sample and saved to the
private record before any shard is protected.

    sample (seeded, spread over the shards, read shard by shard)
      -> feature model (a surrogate bootstrapped on the sample, or the configured checkpoint)
      -> faiss k-means centroids            (cluster partition)
      -> the shared surrogate (min-min on the sample)
      -> triggers: global, or one per cluster, searched by HotFlip against the shared surrogate
      -> RECORD/fit.json, RECORD/features.pt, RECORD/surrogate.pt

A model the fit trained is stored in half precision, and the run uses it rounded the same way, so
a resumed run (which loads it) protects exactly as the first did; the file is half the size. A
pretrained model used as given is not stored at all: the record names it, and a resume rebuilds it.

A resumed or incremental run loads this state instead of fitting again, so every shard of an
output is protected against the same centroids, triggers and surrogate. A rerun whose settings
differ from the fitted ones is refused (the settings are hashed), naming what differs.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine import MEMConfig, protect_unit
from ..engine.clusters import kmeans
from ..engine.mem import Given, bootstrap_features, train_shared_surrogate, unit_config
from ..engine.surrogate import ClipModel, build_model
from ..engine.text import decode_trigger
from ..io.retry import StorageError, retry_counts
from ..io.shards import ReadLimits
from ..io.storage import filesystem, join, read_bytes, write_bytes_atomic
from .samples import read_shard, surrogate_batch

FIT_FILE = "fit.json"
FEATURES_FILE = "features.pt"
SURROGATE_FILE = "surrogate.pt"
FEATURE_SAMPLE = 2048         # pairs the feature model and k-means see
FIT_SHARDS = 32               # shards the sample is spread over (more only when they are too small to fill it)
RUNTIME_ONLY = ("precision", "compile", "candidate_chunk")  # how fast, not what is produced


class SettingsChanged(ValueError):
    """A rerun asks for other settings than the ones this output was fitted and protected with."""


def run_settings(cfg: MEMConfig, image_format: str, partition: str, provenance: str) -> dict[str, Any]:
    """What decides the protected bytes of an output; hashed into the record."""
    engine = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_ONLY}
    return {"engine": engine, "image_format": image_format, "partition": partition, "provenance": provenance}


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'name: old -> new' for every setting that differs (engine settings by their own name)."""
    flat_old = {**old.get("engine", {}), **{k: v for k, v in old.items() if k != "engine"}}
    flat_new = {**new.get("engine", {}), **{k: v for k, v in new.items() if k != "engine"}}
    return [f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in sorted(set(flat_old) | set(flat_new))
            if flat_old.get(k) != flat_new.get(k)]


@dataclass(frozen=True)
class FitRequest:
    """What a fit needs: the run's shards, settings and record (a worker receives it as one object)."""

    shards: list[str]
    cfg: MEMConfig
    settings: dict[str, Any]
    record_url: str
    run_id: str
    storage_options: dict | None
    limits: ReadLimits
    clustered: bool


@dataclass
class TriggerTable:
    """The fitted triggers (token ids): one for every sample of the output, and/or one per fitted cluster."""

    everywhere: list[int] | None = None
    by_cluster: dict[int, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, list[int]]:
        """The record's one spelling: ``global`` and ``cluster:<id>``."""
        out = {} if self.everywhere is None else {"global": list(self.everywhere)}
        out.update({f"cluster:{c}": list(ids) for c, ids in sorted(self.by_cluster.items())})
        return out

    @classmethod
    def from_json(cls, body: dict[str, list[int]]) -> "TriggerTable":
        return cls(body.get("global"), {int(k.split(":", 1)[1]): list(v) for k, v in body.items()
                                        if k.startswith("cluster:")})

    def text(self) -> dict[str, str]:
        return {k: decode_trigger(v) for k, v in self.to_json().items()}


@dataclass
class FitState:
    settings: dict[str, Any]
    config_hash: str
    centroids: np.ndarray | None = None
    triggers: TriggerTable = field(default_factory=TriggerTable)
    sample_keys: list[str] = field(default_factory=list)
    surrogate: ClipModel | None = None
    features: ClipModel | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # pretrained models used as given: named in the record, rebuilt on load, never uploaded
    surrogate_as_given: bool = False
    features_as_given: bool = False

    def cluster_trigger_table(self, clusters: list[int]) -> torch.Tensor | None:
        """k ids per listed cluster (rows in the order given), for units that hold several clusters."""
        if not all(c in self.triggers.by_cluster for c in clusters):
            return None
        return torch.tensor([self.triggers.by_cluster[c] for c in clusters], dtype=torch.long)

    def global_trigger(self) -> torch.Tensor | None:
        ids = self.triggers.everywhere
        return None if ids is None else torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------- the sample

def draw_sample(urls: list[str], n: int, seed: int, storage_options: dict | None, limits: ReadLimits,
                image_size: int) -> list:
    """Up to ``n`` readable samples spread over the shards: shards in a seeded order, an equal
    share from each of ``FIT_SHARDS`` of them (further shards only while the sample is not full),
    read one shard at a time (memory: the sample, never the dataset)."""
    rng = np.random.RandomState(seed)
    order = [urls[i] for i in rng.permutation(len(urls))]
    share = max(1, math.ceil(n / min(len(order), FIT_SHARDS))) if order else 0
    sample = []
    for url in order:
        if len(sample) >= n:
            break
        try:
            decoded = read_shard(url, storage_options, limits, image_size).decoded
        except StorageError:
            continue  # this shard is reported when the protect phase tries it
        picks = rng.permutation(len(decoded))[: min(share, n - len(sample))]
        sample += [decoded[i] for i in sorted(picks)]
    return sample


# ---------------------------------------------------------------- fitting

def fit(request: FitRequest, device: str) -> FitState:
    """Learn the run's shared state on a bounded sample (see the module docstring)."""
    cfg, urls, clustered = request.cfg, request.shards, request.clustered
    started = time.time()
    state = FitState(request.settings, settings_hash(request.settings))
    needs_model = cfg.method != "random"
    frozen = needs_model and cfg.surrogate == "shared" and cfg.pretrained_surrogate and cfg.train_steps == 0
    # a frozen pretrained surrogate learns nothing from the data: no sample is read for it
    size = max(FEATURE_SAMPLE if clustered else 0, cfg.unit_size if needs_model and not frozen else 0)
    if cfg.uses_trigger and cfg.trigger_scope == "global":
        size = max(size, min(cfg.unit_size, FEATURE_SAMPLE))
    sample = draw_sample(urls, size, cfg.seed, request.storage_options, request.limits, cfg.stored_size) if size else []
    state.sample_keys = [f"{d.raw.shard}/{d.raw.key}" for d in sample]
    images = surrogate_batch(sample, cfg.stored_size) if sample else None
    captions = [d.raw.caption for d in sample]
    sample_clusters = None
    if clustered and sample:
        model, feats = bootstrap_features(images, captions, cfg, steps=max(1, cfg.train_steps), device=device)
        state.features, state.features_as_given = model.cpu().eval(), cfg.pretrained_surrogate
        if not state.features_as_given:
            round_to_stored(state.features)
        ids, centroids = kmeans(feats, min(cfg.clusters, len(sample)), cfg.seed)
        state.centroids, sample_clusters = np.asarray(centroids, dtype=np.float32), ids
    if frozen:
        state.surrogate, state.surrogate_as_given = _pretrained_as_given(cfg), True
    elif needs_model and cfg.surrogate == "shared" and sample:
        head = slice(0, cfg.unit_size)
        state.surrogate = round_to_stored(train_shared_surrogate(images[head], captions[head], cfg, device).cpu().eval())
    if cfg.uses_trigger and sample and state.surrogate is not None:
        # HotFlip against the shared surrogate on the sample: no min-min of its own
        search = unit_config(cfg)
        if cfg.trigger_scope == "global":
            result = protect_unit(images, captions, search, device, Given(surrogate=state.surrogate))
            state.triggers.everywhere = result.trigger_ids[0].tolist()
        elif cfg.trigger_scope == "cluster" and sample_clusters is not None:
            local = torch.unique(sample_clusters, return_inverse=True)
            result = protect_unit(images, captions, search, device, Given(local[1], surrogate=state.surrogate))
            for i, cluster in enumerate(sample_clusters.tolist()):
                state.triggers.by_cluster.setdefault(cluster, result.trigger_ids[i].tolist())
    state.info = {"sample": len(sample), "shards": len(urls), "seconds": round(time.time() - started, 2),
                  "device": device}
    return state


# ---------------------------------------------------------------- the record

STORED_DTYPE = torch.float16
AS_GIVEN = "as-given"   # fit.json's entry for a pretrained model that the record does not store


def round_to_stored(model: ClipModel) -> ClipModel:
    """Round the model's floating-point weights through the stored precision, in place: the run
    then uses exactly the weights that a resume will load."""
    with torch.no_grad():
        for tensor in model.clip.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(STORED_DTYPE))
    return model


def _save_model(fs, prefix: str, name: str, model: ClipModel) -> None:
    buf = io.BytesIO()
    state = {k: v.detach().cpu().to(STORED_DTYPE) if v.is_floating_point() else v.detach().cpu()
             for k, v in model.clip.state_dict().items()}
    torch.save({"state_dict": state}, buf)
    write_bytes_atomic(fs, join(prefix, name), buf.getvalue())


def _load_model(fs, prefix: str, name: str, cfg: MEMConfig) -> ClipModel | None:
    try:
        data = read_bytes(fs, join(prefix, name))
    except FileNotFoundError:
        return None
    model = build_model(cfg.arch, cfg.image_size, cfg.context_length, model_config=cfg.model_config)
    # load_state_dict copies into the model's float32 weights: the half-precision values exactly
    model.clip.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["state_dict"])
    return model.eval()


def _pretrained_as_given(cfg: MEMConfig) -> ClipModel:
    return build_model(cfg.arch, cfg.image_size, cfg.context_length, cfg.checkpoint,
                       model_config=cfg.model_config).eval()


def save_fit(record_url: str, state: FitState, run_id: str, storage_options: dict | None) -> None:
    """Weights first, then fit.json (the marker that the fit is complete)."""
    fs, prefix = filesystem(record_url, storage_options)
    if state.features is not None and not state.features_as_given:
        _save_model(fs, prefix, FEATURES_FILE, state.features)
    if state.surrogate is not None and not state.surrogate_as_given:
        _save_model(fs, prefix, SURROGATE_FILE, state.surrogate)

    def entry(model, as_given: bool, name: str):
        return None if model is None else AS_GIVEN if as_given else name

    body = {"config_hash": state.config_hash, "settings": state.settings, "run_id": run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "centroids": None if state.centroids is None else state.centroids.tolist(),
            "triggers": state.triggers.to_json(), "trigger_text": state.triggers.text(),
            "sample_keys": state.sample_keys,
            "features": entry(state.features, state.features_as_given, FEATURES_FILE),
            "surrogate": entry(state.surrogate, state.surrogate_as_given, SURROGATE_FILE), "info": state.info}
    write_bytes_atomic(fs, join(prefix, FIT_FILE), json.dumps(body, indent=1).encode())


def load_fit(record_url: str, cfg: MEMConfig, storage_options: dict | None) -> FitState | None:
    fs, prefix = filesystem(record_url, storage_options)
    try:
        body = json.loads(read_bytes(fs, join(prefix, FIT_FILE)))
    except FileNotFoundError:
        return None
    state = FitState(body["settings"], body["config_hash"],
                     None if body["centroids"] is None else np.asarray(body["centroids"], dtype=np.float32),
                     TriggerTable.from_json(body["triggers"]), body["sample_keys"], info=body["info"])
    for attr, name in (("surrogate", SURROGATE_FILE), ("features", FEATURES_FILE)):
        if body.get(attr) == AS_GIVEN:
            setattr(state, attr, _pretrained_as_given(cfg))
            setattr(state, f"{attr}_as_given", True)
        elif body.get(attr):
            setattr(state, attr, _load_model(fs, prefix, name, cfg))
    state.info = {**body["info"], "fitted_by_run": body["run_id"], "created": body["created"]}
    return state


def fit_summary(state: FitState, record_url: str, cfg: MEMConfig) -> dict[str, Any]:
    """What the run records say about the fit it used."""
    loaded = bool(state.info.get("loaded_from_record"))
    return {"config_hash": state.config_hash, "fit": state.info, "trigger_table": state.triggers.to_json(),
            "trigger_text": state.triggers.text(),
            "centroids": None if state.centroids is None else state.centroids.tolist(),
            "surrogate": {"mode": cfg.surrogate, "trained_this_run": state.surrogate is not None and not loaded,
                          "sample": state.info.get("sample"),
                          "checkpoint": (None if state.surrogate is None else "as given (not stored)"
                                         if state.surrogate_as_given else join(record_url, SURROGATE_FILE))}}


def refuse_changed_settings(record_url: str, settings: dict[str, Any], storage_options: dict | None) -> bool:
    """Refuse (SettingsChanged) when the record's fit was made with other settings, naming what
    differs; True when the record holds a fit of these settings. Reads fit.json only, no weights."""
    fs, prefix = filesystem(record_url, storage_options)
    try:
        body = json.loads(read_bytes(fs, join(prefix, FIT_FILE)))
    except FileNotFoundError:
        return False
    if body["config_hash"] != settings_hash(settings):
        raise SettingsChanged(
            f"this output was protected with other settings ({'; '.join(differing(body['settings'], settings))}). "
            "Mixing two configurations in one output is refused: rerun with the original settings, or add "
            "--new-run to protect into a new output version")
    return True


def fitted_state(request: FitRequest, device: str) -> FitState:
    """The record's fit when there is one (refused when its settings differ), else a new fit, saved."""
    cfg, settings, record_url, storage_options = request.cfg, request.settings, request.record_url, request.storage_options
    if refuse_changed_settings(record_url, settings, storage_options):
        existing = load_fit(record_url, cfg, storage_options)
        existing.info["loaded_from_record"] = True
        return existing
    cached = local_fit_path(record_url, settings)
    if cached.exists():   # an earlier run fitted these settings and could not upload: upload, do not train again
        state = torch.load(cached, map_location="cpu", weights_only=False)
        state.info["loaded_from_local_cache"] = True
    else:
        state = fit(request, device)
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, str(cached) + ".partial")
        os.replace(str(cached) + ".partial", cached)
    save_fit(record_url, state, request.run_id, storage_options)
    cached.unlink(missing_ok=True)   # the record holds it now
    return state


def run_fit(request: FitRequest, device: str) -> tuple[dict[str, Any], FitState]:
    """(what the run record says of the fit, with the storage retries it took; the state)."""
    before = Counter(retry_counts)
    state = fitted_state(request, device)
    summary = fit_summary(state, request.record_url, request.cfg)
    return {**summary, "retries": dict(Counter(retry_counts) - before)}, state


def local_fit_path(record_url: str, settings: dict[str, Any]) -> Path:
    """Where a fit waits for its upload: keyed by the record and the settings' hash, so a rerun after a
    failed record write uploads it instead of fitting again (``MEMPIPE_CACHE``, default ~/.cache/mempipe)."""
    root = Path(os.environ.get("MEMPIPE_CACHE", Path.home() / ".cache" / "mempipe"))
    place = hashlib.sha256(record_url.encode()).hexdigest()[:12]
    return root / "fits" / f"{place}-{settings_hash(settings)}.pt"
