"""The distributed pipeline on Ray Data (DESIGN section 3).

    plan ─▶ read shards (flat_map) ─▶ [features + k-means ─▶ assign clusters] ─▶ MEM actors ─▶ write shards

``--partition shard``: one work unit per shard (cut into chunks of at most ``unit_size``);
each actor protects and writes whole shards, so finished shards appear while the run goes
on. ``--partition cluster``: samples are embedded by a feature model (a local open_clip
checkpoint when the config names one, else a surrogate bootstrapped on a sample of the
data), k-means (faiss) is fit on the sample and assigned in parallel, MEM actors protect
cluster chunks, and the samples are grouped back into their shards for writing.

A named actor holds the shared trigger state: with ``--trigger-scope global`` one trigger is
searched once and every actor reads it. Resume: a shard with a stats file is done.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch

from . import __version__
from .engine import MEMConfig
from .engine.clusters import assign, kmeans
from .engine.mem import bootstrap_features, protect_unit, sample_features
from .engine.surrogate import build_model
from .engine.text import decode_trigger
from .images import ImageFormat
from .progress import RunProgress, quiet_ray
from .locks import OutputLock
from .protect import (Decoded, check_paths, decode_sample, plan, read_shard, run_unit, shared_surrogate, split_units,
                      surrogate_batch, write_protected_shard)
from .provenance import default_record_url, new_run_id, read_run_record, write_run_record
from .retry import StorageError, retry_counts
from .shards import DEFAULT_LIMITS, RawSample, ReadLimits, ShardOutput, done_shards, read_samples, shard_name
from .storage import redact

TRIGGER_ACTOR = "mempipe-trigger-state"
FEATURE_SAMPLE = 2048


@ray.remote(num_cpus=0)
class TriggerState:
    """The run's shared state: the trigger table and model weights (the feature model, the shared
    surrogate), written once by the driver and read by every actor (so actor constructors take
    names, not objects)."""

    def __init__(self) -> None:
        self.triggers: dict[str, list[int]] = {}
        self.weights: dict[str, dict] = {}
        self.inflight: set[str] = set()  # shards an actor has begun and not finished

    def begin(self, shard: str) -> None:
        self.inflight.add(shard)

    def end(self, shard: str) -> None:
        self.inflight.discard(shard)

    def in_flight(self) -> list[str]:
        return sorted(self.inflight)

    def put(self, scope: str, ids: list[int]) -> None:
        self.triggers[scope] = list(ids)

    def get(self, scope: str) -> list[int] | None:
        return self.triggers.get(scope)

    def put_weights(self, name: str, state: dict) -> None:
        self.weights[name] = state

    def get_weights(self, name: str) -> dict | None:
        return self.weights.get(name)


# ---------------------------------------------------------------- rows <-> samples

SHARD_FAILED = -1  # the pos of the one row that stands for a shard whose storage kept failing


def read_rows(row: dict, storage_options: dict | None, limits: ReadLimits = DEFAULT_LIMITS) -> list[dict]:
    """All samples of one shard as flat rows; broken ones carry their error. A shard that cannot
    be read (after retries) becomes one row at pos -1: it is reported, and gets no stats file."""
    name = shard_name(row["url"])
    try:
        samples = read_samples(row["url"], storage_options, limits)
    except StorageError as exc:
        return [{"shard": name, "pos": SHARD_FAILED, "key": "", "image": b"", "ext": "", "caption": "", "meta": "{}",
                 "error": str(exc), "warnings": "[]"}]
    return [{"shard": name, "pos": pos, "key": s.key, "image": s.image or b"", "ext": s.image_ext or "",
             "caption": s.caption or "", "meta": json.dumps(s.meta), "error": s.error or "",
             "warnings": json.dumps(s.warnings)}
            for pos, s in enumerate(samples)]


def to_raw(row) -> RawSample:
    return RawSample(key=row["key"], shard=row["shard"], image=row["image"] or None, image_ext=row["ext"] or None,
                     caption=row["caption"] or None, meta=json.loads(row["meta"]), error=row["error"] or None,
                     warnings=json.loads(row["warnings"]))


def output_row(shard: str, pos: int, out: ShardOutput) -> dict:
    return {"shard": shard, "pos": int(pos), "key": out.key, "image": out.image or b"", "ext": out.image_ext or "",
            "caption": out.caption or "", "meta": json.dumps(out.meta), "error": out.error or ""}


def from_output_row(row) -> ShardOutput:
    return ShardOutput(row["key"], row["image"] or None, row["ext"] or None, row["caption"] or None,
                       json.loads(row["meta"]), row["error"] or None)


def _device(gpus_per_actor: float) -> str:
    return "cuda" if gpus_per_actor and torch.cuda.is_available() else "cpu"


class _MEMActor:
    """Shared set-up of the MEM actors: config, output format, device, shared trigger."""

    def __init__(self, cfg: dict, image_format: str, gpus_per_actor: float, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.cfg = MEMConfig(**cfg)
        self.fmt = ImageFormat.parse(image_format)
        self.device = _device(gpus_per_actor)
        self.fixed_trigger = None
        if self.cfg.uses_trigger and self.cfg.trigger_scope == "global":
            ids = ray.get(ray.get_actor(TRIGGER_ACTOR).get.remote("global"))
            self.fixed_trigger = torch.tensor(ids, dtype=torch.long)
        self.surrogate = None
        if self.cfg.surrogate == "shared" and self.cfg.method != "random":
            self.surrogate = build_model(self.cfg.arch, self.cfg.image_size, self.cfg.context_length)
            self.surrogate.clip.load_state_dict(ray.get(ray.get_actor(TRIGGER_ACTOR).get_weights.remote("surrogate")))
            self.surrogate.eval()

    def protect_items(self, items: list[Decoded], unit_prefix: str,
                      cluster_of: dict | None = None) -> tuple[dict[str, ShardOutput], list[dict]]:
        """MEM over chunks of at most unit_size; ``cluster_of`` gives the pipeline's cluster ids."""
        outputs, summaries = {}, []
        for number, chunk in enumerate(split_units(items, self.cfg.unit_size)):
            clusters = None
            if cluster_of is not None:  # the engine wants ids 0..m-1 inside the unit
                ids = [cluster_of[(d.raw.shard, d.raw.key)] for d in chunk]
                clusters = torch.unique(torch.tensor(ids), return_inverse=True)[1]
            outs, summary = run_unit(chunk, self.cfg, self.fmt, f"{unit_prefix}-{number}", self.device,
                                     clusters=clusters, fixed_trigger=self.fixed_trigger, surrogate=self.surrogate)
            summaries.append(summary)
            outputs.update({(d.raw.shard, d.raw.key): o for d, o in zip(chunk, outs)})
        return outputs, summaries


FAULT_ENV = "MEMPIPE_FAULT_KILL_SHARD"  # fault injection for tests: an actor dies on this shard


class ShardProtector(_MEMActor):
    """``--partition shard``: read one whole shard, protect it, write it (streaming, no shuffle).

    A shard that fails (storage errors past their retries, an error while protecting) is
    reported in the summary and left without a stats file; the actor goes on with the next.
    """

    def __init__(self, output_url: str, storage_options: dict | None, record_url: str, provenance: str, run_id: str,
                 limits: dict | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.output_url, self.storage_options = output_url, storage_options
        self.record_url, self.provenance, self.run_id = record_url, provenance, run_id
        self.limits = ReadLimits(**limits) if limits else DEFAULT_LIMITS
        self.state = ray.get_actor(TRIGGER_ACTOR)

    def protect_shard(self, url: str) -> dict:
        shard = shard_name(url)
        retries_before = sum(retry_counts.values())
        row = {"shard": shard, "protected": 0, "failed": 0, "units": "[]", "error": "", "stage": "",
               "retries": 0}
        try:
            work = read_shard(url, self.storage_options, self.limits, self.cfg.image_size)
        except StorageError as exc:
            row.update(error=str(exc), stage="read")
        else:
            if os.environ.get(FAULT_ENV) == shard:
                os._exit(17)
            try:
                outputs, units = self.protect_items(work.decoded, f"shard-{shard}")
                ordered = [outputs[(d.raw.shard, d.raw.key)] for d in work.decoded] + work.failed
                stats = write_protected_shard(self.output_url, self.record_url, shard, ordered, self.cfg,
                                              self.provenance, self.run_id, self.storage_options)
                row.update(protected=stats["successes"], failed=stats["failed"], units=json.dumps(units, default=str))
            except StorageError as exc:
                row.update(error=str(exc), stage="write")
            except Exception as exc:  # a bug or a resource error on this shard: report it, go on
                row.update(error=f"{type(exc).__name__}: {exc}", stage="protect")
        row["retries"] = sum(retry_counts.values()) - retries_before
        return row

    def __call__(self, batch: dict) -> dict:
        rows = []
        for url in batch["url"]:
            ray.get(self.state.begin.remote(shard_name(url)))
            rows.append(self.protect_shard(url))
            ray.get(self.state.end.remote(shard_name(url)))
        return {k: np.array([r[k] for r in rows]) for k in SUMMARY_COLUMNS}


SUMMARY_COLUMNS = ("shard", "protected", "failed", "units", "error", "stage", "retries")


class ClusterAssigner:
    """Adds each sample's cluster id (nearest centroid under the feature model)."""

    def __init__(self, cfg: dict, centroids: list, gpus_per_actor: float, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.cfg = MEMConfig(**cfg)
        self.device = _device(gpus_per_actor)
        self.model = build_model(self.cfg.arch, self.cfg.image_size, self.cfg.context_length).to(self.device)
        self.model.clip.load_state_dict(ray.get(ray.get_actor(TRIGGER_ACTOR).get_weights.remote("features")))
        self.model.eval()
        self.centroids = np.asarray(centroids, dtype=np.float32)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        decoded = [decode_sample(to_raw(r), self.cfg.image_size) for r in batch.to_dict("records")]
        ok = [i for i, d in enumerate(decoded) if isinstance(d, Decoded)]
        cluster = np.full(len(batch), -1, dtype=np.int64)
        if ok:
            items = [decoded[i] for i in ok]
            feats = sample_features(self.model, surrogate_batch(items, self.cfg.image_size),
                                    [d.raw.caption for d in items], self.cfg, self.device)
            cluster[ok] = assign(feats, self.centroids).numpy()
        batch = batch.copy()
        batch["cluster"] = cluster
        return batch


class ClusterProtector(_MEMActor):
    """``--partition cluster``: protect one work unit of whole clusters; rows go on to the shard writer.

    Unit -1 holds the samples that could not be read or decoded: they leave as failure rows.
    """

    def __call__(self, group: pd.DataFrame) -> pd.DataFrame:
        unit = int(group["unit"].iloc[0])
        rows = group.sort_values(["cluster", "shard", "pos"]).to_dict("records")
        decoded = [decode_sample(to_raw(r), self.cfg.image_size) for r in rows]
        items = [d for d in decoded if isinstance(d, Decoded)]
        cluster_of = {(r["shard"], r["key"]): int(r["cluster"]) for r in rows}
        outputs, _ = self.protect_items(items, f"unit{unit}", cluster_of) if items else ({}, [])
        out_rows = []
        for r, d in zip(rows, decoded):
            out = outputs[(r["shard"], r["key"])] if isinstance(d, Decoded) else d
            if out.image is not None:
                out.meta["mempipe"]["cluster"] = int(r["cluster"])
            out_rows.append(output_row(r["shard"], r["pos"], out))
        return pd.DataFrame(out_rows)


def write_group(group: pd.DataFrame, output_url: str, storage_options: dict | None, cfg: dict, record_url: str,
                provenance: str, run_id: str) -> pd.DataFrame:
    group = group.sort_values("pos")
    shard = group["shard"].iloc[0]
    row = {"shard": shard, "protected": 0, "failed": 0, "units": "[]", "error": "", "stage": "", "retries": 0}
    unreadable = group[group["pos"] == SHARD_FAILED]
    if len(unreadable):
        row.update(error=unreadable["error"].iloc[0], stage="read")
        return pd.DataFrame([row])
    try:
        stats = write_protected_shard(output_url, record_url, shard,
                                      [from_output_row(r) for r in group.to_dict("records")], MEMConfig(**cfg),
                                      provenance, run_id, storage_options)
        row.update(protected=stats["successes"], failed=stats["failed"])
    except StorageError as exc:
        row.update(error=str(exc), stage="write")
    return pd.DataFrame([row])


# ---------------------------------------------------------------- driver

def _sample_items(ds: ray.data.Dataset, n: int) -> list[Decoded]:
    from ray.data.expressions import col

    decoded = [decode_sample(to_raw(r)) for r in ds.filter(expr=col("error") == "").limit(n).take_all()]
    return [d for d in decoded if isinstance(d, Decoded)]


def pack_clusters(sizes: dict[int, int], unit_size: int) -> dict[int, int]:
    """Work units of whole clusters, at most unit_size samples each (first-fit decreasing).

    Every unit trains its own surrogate, so units of one small cluster each would multiply
    the surrogate work; a cluster larger than a unit is cut into chunks by the actor.
    Cluster -1 (unreadable samples) gets unit -1.
    """
    unit_of, loads = {}, []
    for cluster, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        if cluster < 0:
            unit_of[cluster] = -1
            continue
        slot = next((i for i, load in enumerate(loads) if load + size <= unit_size), None)
        if slot is None:
            loads.append(0)
            slot = len(loads) - 1
        loads[slot] += size
        unit_of[cluster] = slot
    return unit_of


def _with_unit(batch: pd.DataFrame, unit_of: dict[int, int]) -> pd.DataFrame:
    batch = batch.copy()
    batch["unit"] = batch["cluster"].map(unit_of).astype("int64")
    return batch


def _partitions(groups: int, num_actors: int) -> int:
    """Shuffle partitions for a groupby: enough to feed the actors, never Ray's default 200."""
    return max(1, min(groups, 2 * num_actors))


def _package_path() -> str:
    """The folder the running mempipe was imported from (site-packages, or a clone for editable installs)."""
    import mempipe

    return os.path.dirname(os.path.dirname(os.path.abspath(mempipe.__file__)))


def init_ray(address: str | None, num_actors: int, verbose: bool = False) -> None:
    """Join a cluster, or start the embedded local Ray.

    Credentials are never put in Ray's ``runtime_env`` (Ray's agent logs it in plain text):
    local workers inherit the driver's environment, and a cluster's pods get theirs from the
    cluster (a Kubernetes secret, an instance role). Ray puts the driver's current folder first on
    its workers' import path; a folder named ``mempipe`` there (the parent of a clone) would shadow
    an editable install, so the folder this package was imported from goes on PYTHONPATH.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit` and on KubeRay pods
    logging_level = logging.INFO if verbose else logging.ERROR
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=verbose, logging_level=logging_level)
    else:  # the embedded default: a local Ray. Logical CPUs are oversubscribed so that the actor pools,
        # the hash-shuffle aggregators of the groupbys and the write tasks all find a slot at once
        # (with logical = physical cores they wait on each other); threads follow the real cores.
        cores = os.cpu_count() or 1
        python_path = os.pathsep.join(p for p in (_package_path(), os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=max(cores, 4 * num_actors + 8), include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=verbose, logging_level=logging_level,
                 runtime_env={"env_vars": {"PYTHONPATH": python_path}})


def _actor_pool(actors: int) -> ray.data.ActorPoolStrategy:
    """Up to ``actors`` actors, starting with one, so a pool never waits for inputs it cannot get."""
    return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors))


# Ray Data keeps actor constructor arguments in the object store; with restarts on, a lost
# argument would make a restarted actor fail later. A failed actor fails the run instead, and
# a rerun resumes from the shards already written.
# Ray 2.60's map_batches/map_groups have no named parameter for it: it goes through
# ray_remote_args (Ray Data's own documented way), whose deprecation notice is silenced below.
NO_RESTARTS = {"max_restarts": 0}
warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated", category=DeprecationWarning)


def _absolute(url: str | None) -> str | None:
    """Local paths made absolute: Ray's workers may run in another folder (or on another node)."""
    if url is None or "://" in url or "::" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def run_pipeline(input_url: str, output_url: str, cfg: MEMConfig, image_format: str = "png",
                 storage_options: dict | None = None, partition: str = "shard", num_actors: int = 2,
                 gpus_per_actor: float = 0.0, ray_address: str | None = None, record_url: str | None = None,
                 provenance: str = "public", show_progress: bool = True, verbose: bool = False,
                 limits: ReadLimits = DEFAULT_LIMITS, break_lock: bool = False) -> dict[str, Any]:
    input_url, output_url = _absolute(input_url), _absolute(output_url)
    record_url = _absolute(record_url) or default_record_url(output_url)
    check_paths(input_url, output_url, record_url)
    ImageFormat.parse(image_format)
    if provenance not in ("public", "full"):
        raise ValueError(f"--provenance is public or full, got {provenance!r}")
    run_id = new_run_id()
    shards, todo = plan(input_url, output_url, storage_options)
    with OutputLock(output_url, run_id, storage_options).acquire(break_lock):
        return _run_locked(input_url, output_url, cfg, image_format, storage_options, partition, num_actors,
                           gpus_per_actor, ray_address, record_url, provenance, show_progress, verbose, limits, run_id,
                           shards, todo)


def _run_locked(input_url, output_url, cfg, image_format, storage_options, partition, num_actors, gpus_per_actor,
                ray_address, record_url, provenance, show_progress, verbose, limits, run_id, shards,
                todo) -> dict[str, Any]:
    started = time.time()
    previous = read_run_record(output_url, record_url, storage_options)
    record: dict[str, Any] = {
        "mempipe_version": __version__, "run_id": run_id, "input": input_url, "output": output_url,
        "record": record_url, "provenance": provenance, "engine": "ray",
        "storage_options": redact(storage_options or {}), "config": cfg.to_dict(), "image_format": image_format,
        "partition": partition, "num_actors": num_actors, "gpus_per_actor": gpus_per_actor,
        "shards_total": len(shards), "shards_done_before": len(shards) - len(todo),
        "surrogate": {"mode": cfg.surrogate},
    }
    triggers: dict[str, list[int]] = dict((previous or {}).get("trigger_table") or {})
    centroids = (previous or {}).get("centroids")
    counts = {"protected": 0, "failed": 0, "retries": 0}
    failed_shards: list[dict] = []
    progress = RunProgress(len(todo), enabled=show_progress)
    retries_before = sum(retry_counts.values())
    limit_kwargs = dataclasses.asdict(limits)
    if todo:
        progress.phase("starting Ray")
        quiet_ray(verbose)
        init_ray(ray_address, num_actors, verbose)
        cores = os.cpu_count() or 1
        threads = max(1, cores // max(1, num_actors))
        urls = ray.data.from_items([{"url": u} for u in todo], override_num_blocks=len(todo))
        ds = None
        if partition == "cluster" or (cfg.uses_trigger and cfg.trigger_scope == "global" and "global" not in triggers):
            progress.phase("reading")
            # samples cross shards here: read once into Ray's object store (it spills to disk when full)
            ds = urls.flat_map(read_rows, fn_kwargs={"storage_options": storage_options, "limits": limits}).materialize()
        state = TriggerState.options(name=TRIGGER_ACTOR, get_if_exists=True).remote()
        device = _device(gpus_per_actor)
        if cfg.uses_trigger and cfg.trigger_scope == "global":
            if "global" not in triggers:  # searched once per output, reused by later batches of the same output
                progress.phase("global trigger")
                sample = _sample_items(ds, cfg.unit_size)
                result = protect_unit(surrogate_batch(sample, cfg.image_size), [d.raw.caption for d in sample], cfg, device)
                triggers["global"] = result.trigger_ids[0].tolist()
            ray.get(state.put.remote("global", triggers["global"]))
        if cfg.surrogate == "shared" and cfg.method != "random":
            progress.phase("shared surrogate")
            sample = _sample_items(ds, cfg.unit_size) if ds is not None else _first_readable(todo, storage_options,
                                                                                             limits, cfg)
            model, record["surrogate"] = shared_surrogate(cfg, record_url, sample, device, storage_options)
            ray.get(state.put_weights.remote("surrogate", model.clip.state_dict()))
        actor_kwargs = dict(cfg=cfg.to_dict(), image_format=image_format, gpus_per_actor=gpus_per_actor, threads=threads)
        writer = {"output_url": output_url, "storage_options": storage_options, "record_url": record_url,
                  "provenance": provenance, "run_id": run_id}
        unit_logs = []

        def consume(summary) -> None:
            for row in summary.iter_rows():   # streaming: the bar moves as each shard is written
                counts["retries"] += int(row["retries"])
                if row["error"]:
                    failed_shards.append({"shard": row["shard"], "stage": row["stage"], "reason": row["error"]})
                    progress.shard_done(0, 0)
                    continue
                counts["protected"] += int(row["protected"])
                counts["failed"] += int(row["failed"])
                unit_logs.extend(json.loads(row["units"]))
                progress.shard_done(int(row["protected"]), int(row["failed"]))

        if partition == "shard":
            progress.phase("protecting")
            _protect_shards(todo, num_actors, cores, gpus_per_actor, {**writer, **actor_kwargs, "limits": limit_kwargs},
                            state, consume, failed_shards, output_url, storage_options)
        else:
            progress.phase("features + k-means")
            sample = _sample_items(ds, FEATURE_SAMPLE)
            model, feats = bootstrap_features(surrogate_batch(sample, cfg.image_size), [d.raw.caption for d in sample],
                                              cfg, steps=max(1, cfg.train_steps), device=device)
            if centroids is None:  # later batches keep the first batch's clusters
                _, fitted = kmeans(feats, cfg.clusters, cfg.seed)
                centroids = fitted.tolist()
            ray.get(state.put_weights.remote("features", {k: v.cpu() for k, v in model.clip.state_dict().items()}))
            progress.phase("assigning clusters")
            # every row goes through (unreadable ones get cluster -1 and come out as failure records)
            assigned = ds.map_batches(ClusterAssigner, batch_format="pandas", batch_size=256,
                                      compute=_actor_pool(num_actors), num_cpus=1, num_gpus=gpus_per_actor, **NO_RESTARTS,
                                      fn_constructor_kwargs={"cfg": cfg.to_dict(), "centroids": centroids,
                                                             "gpus_per_actor": gpus_per_actor, "threads": threads})
            assigned = assigned.materialize()
            clusters = assigned.select_columns(["cluster"]).to_pandas()["cluster"]
            sizes = {int(k): int(v) for k, v in clusters.value_counts().items()}
            unit_of = pack_clusters(sizes, cfg.unit_size)
            assigned = assigned.map_batches(_with_unit, batch_format="pandas", fn_kwargs={"unit_of": unit_of})
            units = len(set(unit_of.values()))
            actors = min(num_actors, units)
            actor_kwargs["threads"] = max(1, cores // actors)
            protected = assigned.groupby("unit", num_partitions=_partitions(units, num_actors)).map_groups(
                ClusterProtector, batch_format="pandas", compute=_actor_pool(actors), num_gpus=gpus_per_actor,
                num_cpus=1, fn_constructor_kwargs=actor_kwargs, **NO_RESTARTS)
            summary = protected.groupby("shard", num_partitions=_partitions(len(todo), num_actors)).map_groups(
                write_group, batch_format="pandas", fn_kwargs={**writer, "cfg": cfg.to_dict()})
            progress.phase("protecting")
            consume(summary)
        record["units"] = unit_logs
        ray.kill(state)
    progress.phase("done")
    progress.close()
    record.update({"shards_written": len(todo) - len(failed_shards), "shards_failed": failed_shards,
                   "samples_protected": counts["protected"], "samples_failed": counts["failed"],
                   "retries": {"io": counts["retries"] + sum(retry_counts.values()) - retries_before},
                   "trigger_table": triggers, "trigger_text": {k: decode_trigger(v) for k, v in triggers.items()},
                   "centroids": centroids, "seconds": round(time.time() - started, 2)})
    write_run_record(output_url, record_url, record, provenance, storage_options)
    return record


def _first_readable(todo: list[str], storage_options: dict | None, limits: ReadLimits, cfg: MEMConfig) -> list[Decoded]:
    """The shared surrogate's sample: the first shard that can be read (a failing one is skipped here
    and reported when its actor tries it)."""
    for url in todo:
        try:
            return read_shard(url, storage_options, limits, cfg.image_size).decoded[: cfg.unit_size]
        except StorageError:
            continue
    return []


def _protect_shards(todo: list[str], num_actors: int, cores: int, gpus_per_actor: float, constructor: dict, state,
                    consume, failed_shards: list[dict], output_url: str, storage_options: dict | None) -> None:
    """The shard partition, surviving a worker that dies (a shard that exhausts memory or crashes a
    decoder): the shards it had in flight are retried one at a time, alone; one that kills its
    worker again is quarantined (named in the run's failed shards, no stats file) and the run goes on."""
    remaining = list(todo)
    suspects: list[str] = []
    while remaining or suspects:
        alone = bool(suspects) and not remaining
        batch = [suspects.pop(0)] if alone else remaining
        actors = 1 if alone else min(num_actors, len(batch))
        ds = ray.data.from_items([{"url": u} for u in batch], override_num_blocks=len(batch))
        summary = ds.map_batches(
            ShardProtector, batch_size=1, compute=_actor_pool(actors), num_gpus=gpus_per_actor, num_cpus=1,
            **NO_RESTARTS, fn_constructor_kwargs={**constructor, "threads": max(1, cores // actors)})
        try:
            consume(summary)
            remaining = [] if not alone else remaining
        except Exception as exc:  # a worker died: Ray Data stops the whole dataset
            died = ray.get(state.in_flight.remote())
            for shard in died:
                ray.get(state.end.remote(shard))
            if alone:
                failed_shards.append({"shard": shard_name(batch[0]), "stage": "protect", "reason":
                                      f"quarantined: its worker died while protecting it, twice "
                                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"})
                continue
            if not died:
                raise
            done = done_shards(output_url, storage_options)
            reported = {f["shard"] for f in failed_shards}
            suspects += [u for u in batch if shard_name(u) in died]
            remaining = [u for u in batch if shard_name(u) not in done and shard_name(u) not in reported
                         and shard_name(u) not in died]


