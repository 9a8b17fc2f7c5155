"""Protect one window of input shards: the work item of both runners (in-process and Ray).

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
from typing import Callable

import numpy as np
import torch

from ..engine import MEMConfig
from ..engine.clusters import assign
from ..engine.mem import sample_features
from .fit import FitState
from ..io.images import ImageFormat
from .protect import Decoded, ShardWork, read_shard, run_unit, split_units, surrogate_batch, write_protected_shard
from ..io.retry import StorageError, retry_counts
from ..io.shards import ReadLimits, ShardOutput, shard_name


@dataclass
class Writer:
    output_url: str
    record_url: str
    provenance: str
    run_id: str
    storage_options: dict | None = None


@dataclass
class ShardResult:
    shard: str
    protected: int = 0
    failed: int = 0
    error: str = ""
    stage: str = ""
    retries: dict[str, int] = field(default_factory=dict)   # what -> retries, this window's (first shard)
    units: list[dict] = field(default_factory=list)

    def row(self) -> dict:
        return {"shard": self.shard, "protected": self.protected, "failed": self.failed, "error": self.error,
                "stage": self.stage, "retries": json.dumps(self.retries), "units": json.dumps(self.units, default=str)}


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


def protect_window(urls: list[str], state: FitState, cfg: MEMConfig, fmt: ImageFormat, writer: Writer,
                   limits: ReadLimits, device: str, clustered: bool,
                   on_round: Callable[[dict], None] | None = None) -> list[ShardResult]:
    retries_before = Counter(retry_counts)
    results = {shard_name(u): ShardResult(shard_name(u)) for u in urls}
    works: list[ShardWork] = []
    for url in urls:
        try:
            # only encoded bytes are held for the window; pixels are decoded per batch and per unit
            works.append(read_shard(url, writer.storage_options, limits))
        except StorageError as exc:
            results[shard_name(url)].error, results[shard_name(url)].stage = str(exc), "read"
    items = [d for w in works for d in w.decoded]
    outputs: dict[tuple[str, str], ShardOutput] = {}
    unit_logs: list[dict] = []
    try:
        for unit_id, unit, clusters, global_ids, fixed in _units(items, works, state, cfg, device, clustered):
            outs, summary = run_unit(unit, cfg, fmt, unit_id, device, on_round, clusters=clusters,
                                     fixed_trigger=fixed, surrogate=state.surrogate)
            unit_logs.append(summary)
            for i, (d, out) in enumerate(zip(unit, outs)):
                if global_ids is not None and out.image is not None:
                    out.meta["mempipe"]["cluster"] = global_ids[i]  # the fitted cluster, not the unit's local id
                outputs[(d.raw.shard, d.raw.key)] = out
    except Exception as exc:  # a bug or a resource error in this window: report its shards, go on
        for work in works:
            results[work.name].error, results[work.name].stage = f"{type(exc).__name__}: {exc}", "protect"
        works = []
    for work in works:
        result = results[work.name]
        ordered = [outputs[(d.raw.shard, d.raw.key)] for d in work.decoded] + work.failed
        try:
            stats = write_protected_shard(writer.output_url, writer.record_url, work.name, ordered, cfg,
                                          writer.provenance, writer.run_id, writer.storage_options)
        except StorageError as exc:
            result.error, result.stage = str(exc), "write"
            continue
        result.protected, result.failed = stats["successes"], stats["failed"]
    ordered_results = [results[shard_name(u)] for u in urls]
    if ordered_results:  # the window's unit logs travel with its first shard
        ordered_results[0].units = unit_logs
        ordered_results[0].retries = dict(Counter(retry_counts) - retries_before)
    return ordered_results


def _units(items: list[Decoded], works: list[ShardWork], state: FitState, cfg: MEMConfig, device: str,
           clustered: bool):
    """(unit id, samples, unit-local cluster ids, fitted cluster ids, fixed trigger), the ids None
    without clusters, the trigger None where the unit searches its own."""
    if not items:
        return
    global_trigger = state.global_trigger() if cfg.uses_trigger and cfg.trigger_scope == "global" else None
    if not clustered:  # each shard's samples in chunks; the engine clusters inside a unit when it must
        for work in works:
            for number, chunk in enumerate(split_units(work.decoded, cfg.unit_size)):
                yield f"{work.name}-{number}", chunk, None, None, global_trigger
        return
    cluster_of = assign_clusters(items, state, cfg, device)
    for number, idx in enumerate(pack_units(cluster_of, cfg.unit_size)):
        unit = [items[i] for i in idx]
        ids = [cluster_of[i] for i in idx]
        present, local = torch.unique(torch.tensor(ids), return_inverse=True)
        fixed = global_trigger
        if cfg.uses_trigger and cfg.trigger_scope == "cluster":
            fixed = state.cluster_trigger_table(present.tolist())  # None: the unit searches its own
        yield f"{works[0].name}+{len(works)}-{number}", unit, local, ids, fixed
