"""Protect one window of input shards: the work item of every distributor (in-process and Ray).

    read each shard (retried) -> [assign every sample to the fitted centroids]
      -> units: whole clusters packed up to unit_size, a larger cluster cut into chunks that
         share its fitted trigger (or, without clusters, each shard's samples in chunks)
      -> MEM per unit against the fitted shared surrogate -> write each shard, stats last

Memory is the window's encoded bytes plus the units' surrogate-size tensors, whatever the
size of the dataset; each shard of the window is written as soon as the window is protected.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from ..engine import MEMConfig, protect_unit
from ..engine.clusters import assign
from ..engine.mem import Given, sample_features, unit_config
from ..engine.surrogate import ClipModel, ensemble_models
from ..engine.text import decode_trigger
from ..io.images import ImageFormat
from ..io.provenance import publish, write_private_samples
from ..io.retry import StorageError, retry_counts
from ..io.shards import ReadLimits, ShardOutput, shard_name, write_shard
from .fit import FitState
from .samples import Decoded, Protection, ShardWork, finish_sample, read_shard, split_units, surrogate_batch


@dataclass(frozen=True)
class Writer:
    """Where and how a window's shards are written."""

    output_url: str
    record_url: str
    provenance: str
    run_id: str
    storage_options: dict | None = None


@dataclass(frozen=True)
class WindowTask:
    """Everything a worker needs besides the fit to protect windows: what a Ray actor receives."""

    cfg: MEMConfig
    fmt: ImageFormat
    writer: Writer
    limits: ReadLimits
    clustered: bool


@dataclass
class ShardResult:
    """What protecting one shard came to; the window's unit logs and retries travel with its first shard."""

    shard: str
    protected: int = 0
    failed: int = 0
    error: str = ""
    stage: str = ""
    retries: dict[str, int] = field(default_factory=dict)   # what -> retries
    units: list[dict] = field(default_factory=list)

    def row(self) -> dict:
        """As a row of Ray Data's summary dataset (nested values as JSON text)."""
        return {"shard": self.shard, "protected": self.protected, "failed": self.failed, "error": self.error,
                "stage": self.stage, "retries": json.dumps(self.retries), "units": json.dumps(self.units, default=str)}

    @classmethod
    def from_row(cls, row: dict) -> "ShardResult":
        return cls(str(row["shard"]), int(row["protected"]), int(row["failed"]), str(row["error"]), str(row["stage"]),
                   json.loads(row["retries"]), json.loads(row["units"]))


@dataclass
class Unit:
    """Samples protected together; ``clusters`` unit-local ids, ``fitted_clusters`` the fit's ids,
    ``trigger`` the fitted trigger(s) it uses (None: it searches its own)."""

    name: str
    items: list[Decoded]
    clusters: torch.Tensor | None = None
    fitted_clusters: list[int] | None = None
    trigger: torch.Tensor | None = None


def cut_windows(shards: list[str], size: int) -> list[list[str]]:
    """Work items: consecutive input shards, ``size`` at a time."""
    return [shards[i:i + size] for i in range(0, len(shards), max(1, size))]


def pack_units(cluster_of: list[int], unit_size: int) -> list[list[int]]:
    """Indices grouped into units: whole clusters first-fit-decreasing up to ``unit_size``; a
    cluster larger than that is cut into balanced chunks of its own (that share its trigger)."""
    members: dict[int, list[int]] = {}
    for i, c in enumerate(cluster_of):
        members.setdefault(c, []).append(i)
    units: list[list[int]] = []
    loads: list[int] = []
    for cluster, idx in sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(idx) > unit_size:
            parts = -(-len(idx) // unit_size)
            bounds = np.linspace(0, len(idx), parts + 1).round().astype(int)
            units += [idx[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            loads += [unit_size] * parts  # full: nothing else joins a chunk of a large cluster
            continue
        slot = next((u for u, load in enumerate(loads) if load + len(idx) <= unit_size), None)
        if slot is None:
            units.append([])
            loads.append(0)
            slot = len(units) - 1
        units[slot] += idx
        loads[slot] += len(idx)
    return units


ASSIGN_BATCH = 512  # samples decoded to the surrogate's size at a time while assigning clusters


def assign_clusters(items: list[Decoded], state: FitState, cfg: MEMConfig, device: str) -> list[int]:
    """Each sample's nearest fitted centroid under the fitted feature model, a batch at a time
    (a window's samples are never all decoded at once)."""
    model = state.features.to(device)
    ids: list[int] = []
    for start in range(0, len(items), ASSIGN_BATCH):
        batch = items[start:start + ASSIGN_BATCH]
        feats = sample_features(model, surrogate_batch(batch, cfg.image_size), [d.raw.caption for d in batch], cfg,
                                device)
        ids += assign(feats, state.centroids).tolist()
    return ids


def run_unit(unit: Unit, task: WindowTask, surrogate: ClipModel | None, device: str,
             on_round: Callable[[dict], None] | None = None) -> tuple[list[ShardOutput], dict]:
    """The engine on one unit, then each sample finished; returns the outputs and the unit's log.
    ``surrogate``: the run's fitted shared surrogate (``cfg.surrogate == "shared"``)."""
    cfg = task.cfg
    keys = None if unit.fitted_clusters is None else torch.tensor(unit.fitted_clusters)
    given = Given(unit.clusters, unit.trigger, surrogate, ensemble_models(cfg.ensemble), cluster_keys=keys)
    result = protect_unit(surrogate_batch(unit.items, cfg.stored_size), [d.raw.caption for d in unit.items],
                          unit_config(cfg), device, given, progress=on_round)
    noise = result.noise.permute(0, 2, 3, 1).numpy()
    triggers = result.trigger_ids.tolist()
    engine_clusters = None if result.cluster_ids is None else result.cluster_ids.tolist()
    clusters = unit.fitted_clusters or engine_clusters   # the fitted cluster, not the unit's local id
    words = [0] * len(unit.items) if result.trigger_word_index is None else result.trigger_word_index.tolist()
    outputs = [finish_sample(d, Protection(noise[i], triggers[i], words[i], None if clusters is None else clusters[i]),
                             cfg, task.fmt, unit.name) for i, d in enumerate(unit.items)]
    trigger_texts = Counter(decode_trigger(t) for t in triggers if t)
    summary = {"unit": unit.name, "samples": len(unit.items), "log": result.log,
               "distinct_triggers": len(trigger_texts), "top_triggers": trigger_texts.most_common(10)}
    if result.centroids is not None:
        summary["centroids_shape"] = list(result.centroids.shape)
    return outputs, summary


def write_protected_shard(writer: Writer, name: str, outputs: list[ShardOutput], method: str) -> dict:
    """The private per-sample record first, then the shard as published (its stats file last)."""
    published, private = publish(outputs, writer.provenance, writer.run_id)
    write_private_samples(writer.record_url, name, private, writer.storage_options)
    return write_shard(writer.output_url, name, published, storage_options=writer.storage_options,
                       extra_stats={"method": method, "input_shard": name, "run_id": writer.run_id})


def protect_window(urls: list[str], state: FitState, task: WindowTask, device: str,
                   on_round: Callable[[dict], None] | None = None) -> list[ShardResult]:
    """Read, [assign,] protect and write the window's shards; a shard that fails is reported in its
    result (stage and reason), never raised, so the run goes on."""
    retries_before = Counter(retry_counts)
    results = {shard_name(u): ShardResult(shard_name(u)) for u in urls}
    works: list[ShardWork] = []
    for url in urls:
        try:
            # only encoded bytes are held for the window; pixels are decoded per batch and per unit
            works.append(read_shard(url, task.writer.storage_options, task.limits))
        except StorageError as exc:
            results[shard_name(url)].error, results[shard_name(url)].stage = str(exc), "read"
    outputs: dict[tuple[str, str], ShardOutput] = {}
    unit_logs: list[dict] = []
    try:
        for unit in units_of(works, state, task, device):
            outs, summary = run_unit(unit, task, state.surrogate, device, on_round)
            unit_logs.append(summary)
            outputs.update(((d.raw.shard, d.raw.key), out) for d, out in zip(unit.items, outs))
    except Exception as exc:  # a bug or a resource error in this window: report its shards, go on
        for work in works:
            results[work.name].error, results[work.name].stage = f"{type(exc).__name__}: {exc}", "protect"
        works = []
    for work in works:
        result = results[work.name]
        ordered = [outputs[(d.raw.shard, d.raw.key)] for d in work.decoded] + work.failed
        try:
            stats = write_protected_shard(task.writer, work.name, ordered, task.cfg.method)
        except StorageError as exc:
            result.error, result.stage = str(exc), "write"
            continue
        result.protected, result.failed = stats["successes"], stats["failed"]
    ordered_results = [results[shard_name(u)] for u in urls]
    if ordered_results:
        ordered_results[0].units = unit_logs
        ordered_results[0].retries = dict(Counter(retry_counts) - retries_before)
    return ordered_results


def units_of(works: list[ShardWork], state: FitState, task: WindowTask, device: str) -> Iterator[Unit]:
    """The window's units: each shard's samples in chunks, or (clustered) whole fitted clusters packed."""
    cfg = task.cfg
    items = [d for w in works for d in w.decoded]
    if not items:
        return
    global_trigger = state.global_trigger() if cfg.uses_trigger and cfg.trigger_scope == "global" else None
    if not task.clustered:  # the engine clusters inside a unit when it must
        for work in works:
            for number, chunk in enumerate(split_units(work.decoded, cfg.unit_size)):
                yield Unit(f"{work.name}-{number}", chunk, trigger=global_trigger)
        return
    cluster_of = assign_clusters(items, state, cfg, device)
    for number, idx in enumerate(pack_units(cluster_of, cfg.unit_size)):
        ids = [cluster_of[i] for i in idx]
        present, local = torch.unique(torch.tensor(ids), return_inverse=True)
        trigger = global_trigger
        if cfg.uses_trigger and cfg.trigger_scope == "cluster":
            trigger = state.cluster_trigger_table(present.tolist())  # None: the unit searches its own
        yield Unit(f"{works[0].name}+{len(works)}-{number}", [items[i] for i in idx], local, ids, trigger)
