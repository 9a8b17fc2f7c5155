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
from .protect import (Decoded, check_paths, decode_sample, read_shard, run_unit, shared_surrogate, split_units,
                      surrogate_batch, write_protected_shard)
from .provenance import check_record, default_record_url, new_run_id, read_run_record, write_run_record
from .shards import RawSample, ShardOutput, iter_shard, list_shards, shard_done, shard_name
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

    def put(self, scope: str, ids: list[int]) -> None:
        self.triggers[scope] = list(ids)

    def get(self, scope: str) -> list[int] | None:
        return self.triggers.get(scope)

    def put_weights(self, name: str, state: dict) -> None:
        self.weights[name] = state

    def get_weights(self, name: str) -> dict | None:
        return self.weights.get(name)


# ---------------------------------------------------------------- rows <-> samples

def read_rows(row: dict, storage_options: dict | None) -> list[dict]:
    """All samples of one shard as flat rows; broken ones carry their error."""
    name = shard_name(row["url"])
    return [{"shard": name, "pos": pos, "key": s.key, "image": s.image or b"", "ext": s.image_ext or "",
             "caption": s.caption or "", "meta": json.dumps(s.meta), "error": s.error or "",
             "warnings": json.dumps(s.warnings)}
            for pos, s in enumerate(iter_shard(row["url"], storage_options))]


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


class ShardProtector(_MEMActor):
    """``--partition shard``: read one whole shard, protect it, write it (streaming, no shuffle)."""

    def __init__(self, output_url: str, storage_options: dict | None, record_url: str, provenance: str, run_id: str,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.output_url, self.storage_options = output_url, storage_options
        self.record_url, self.provenance, self.run_id = record_url, provenance, run_id

    def __call__(self, batch: dict) -> dict:
        summaries = []
        for url in batch["url"]:
            shard = shard_name(url)
            decoded = [decode_sample(raw) for raw in iter_shard(url, self.storage_options)]
            items = [d for d in decoded if isinstance(d, Decoded)]
            outputs, units = self.protect_items(items, f"shard-{shard}")
            ordered = [outputs[(d.raw.shard, d.raw.key)] if isinstance(d, Decoded) else d for d in decoded]
            stats = write_protected_shard(self.output_url, self.record_url, shard, ordered, self.cfg, self.provenance,
                                          self.run_id, self.storage_options)
            summaries.append({"shard": shard, "protected": stats["successes"], "failed": stats["failed"],
                              "units": json.dumps(units, default=str)})
        return {k: np.array([s[k] for s in summaries]) for k in ("shard", "protected", "failed", "units")}


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
        decoded = [decode_sample(to_raw(r)) for r in batch.to_dict("records")]
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
        decoded = [decode_sample(to_raw(r)) for r in rows]
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
    stats = write_protected_shard(output_url, record_url, shard, [from_output_row(r) for r in group.to_dict("records")],
                                  MEMConfig(**cfg), provenance, run_id, storage_options)
    return pd.DataFrame([{"shard": shard, "protected": stats["successes"], "failed": stats["failed"], "units": "[]"}])


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


def init_ray(address: str | None, num_actors: int, verbose: bool = False) -> None:
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
        ray.init(num_cpus=max(cores, 4 * num_actors + 8), include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=verbose, logging_level=logging_level,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("AWS_")}})


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


def run_pipeline(input_url: str, output_url: str, cfg: MEMConfig, image_format: str = "png",
                 storage_options: dict | None = None, partition: str = "shard", num_actors: int = 2,
                 gpus_per_actor: float = 0.0, ray_address: str | None = None, record_url: str | None = None,
                 provenance: str = "public", show_progress: bool = True, verbose: bool = False) -> dict[str, Any]:
    check_paths(input_url, output_url)
    ImageFormat.parse(image_format)
    record_url = record_url or default_record_url(output_url)
    check_record(output_url, record_url, provenance)
    run_id = new_run_id()
    started = time.time()
    shards = list_shards(input_url, storage_options)
    if not shards:
        raise FileNotFoundError(f"no .tar shards under {input_url}")
    todo = [s for s in shards if not shard_done(output_url, shard_name(s), storage_options)]
    previous = read_run_record(output_url, record_url, storage_options)
    record: dict[str, Any] = {
        "mempipe_version": __version__, "run_id": run_id, "input": input_url, "output": output_url,
        "record": record_url, "provenance": provenance, "engine": "ray",
        "storage_options": redact(storage_options or {}), "config": cfg.to_dict(), "image_format": image_format,
        "partition": partition, "num_actors": num_actors, "gpus_per_actor": gpus_per_actor,
        "shards_total": len(shards), "shards_done_before": len(shards) - len(todo), "shards_written": len(todo),
        "surrogate": {"mode": cfg.surrogate},
    }
    triggers: dict[str, list[int]] = dict((previous or {}).get("trigger_table") or {})
    centroids = (previous or {}).get("centroids")
    counts = {"protected": 0, "failed": 0}
    progress = RunProgress(len(todo), enabled=show_progress)
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
            ds = urls.flat_map(read_rows, fn_kwargs={"storage_options": storage_options}).materialize()
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
            sample = (_sample_items(ds, cfg.unit_size) if ds is not None
                      else read_shard(todo[0], storage_options).decoded[: cfg.unit_size])
            model, record["surrogate"] = shared_surrogate(cfg, record_url, sample, device, storage_options)
            ray.get(state.put_weights.remote("surrogate", model.clip.state_dict()))
        actor_kwargs = dict(cfg=cfg.to_dict(), image_format=image_format, gpus_per_actor=gpus_per_actor, threads=threads)
        writer = {"output_url": output_url, "storage_options": storage_options, "record_url": record_url,
                  "provenance": provenance, "run_id": run_id}
        if partition == "shard":
            # never more actors than shards: the cores go to the actors that have work
            actors = min(num_actors, len(todo))
            actor_kwargs["threads"] = max(1, cores // actors)
            summary = urls.map_batches(
                ShardProtector, batch_size=1, compute=_actor_pool(actors), num_gpus=gpus_per_actor, num_cpus=1, **NO_RESTARTS,
                fn_constructor_kwargs={**writer, **actor_kwargs})
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
        unit_logs = []
        for row in summary.iter_rows():   # streaming: the bar moves as each shard is written
            counts["protected"] += int(row["protected"])
            counts["failed"] += int(row["failed"])
            unit_logs += json.loads(row["units"])
            progress.shard_done(int(row["protected"]), int(row["failed"]))
        record["units"] = unit_logs
        ray.kill(state)
    progress.phase("done")
    progress.close()
    record.update({"samples_protected": counts["protected"], "samples_failed": counts["failed"],
                   "trigger_table": triggers, "trigger_text": {k: decode_trigger(v) for k, v in triggers.items()},
                   "centroids": centroids, "seconds": round(time.time() - started, 2)})
    write_run_record(output_url, record_url, record, provenance, storage_options)
    return record
