"""The distributed pipeline on Ray Data: fit once, then protect in windows of shards, streaming.

    plan (one listing) ─▶ fit (a Ray task: sample, feature model, k-means, shared surrogate,
    triggers; saved to the private record) ─▶ windows of W shards ─▶ MEM actors
    (read, [assign to the fitted centroids], protect, write each shard, stats last)

No groupby, no shuffle, no materialised dataset: the only rows in Ray's object store are the
window URLs and one summary row per shard, so memory is bounded by the window, finished shards
appear while the run goes on, and a killed run resumes window by window. ``--partition shard``
is the same with windows of one shard and no clusters.

A named actor tracks which shards are in flight: when a worker dies (a shard that exhausts
memory or crashes a decoder), those shards are retried alone, and one that kills its worker
again is quarantined while the run goes on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import warnings
from collections import Counter
from typing import Any

import numpy as np
import ray
import torch

from .. import __version__
from ..engine import MEMConfig
from ..io.retry import StorageError, retry_counts
from .fit import FitState, fit_summary, fitted_state, refuse_changed_settings, run_settings
from ..io.images import ImageFormat
from ..io.locks import OutputLock
from .progress import RunProgress, quiet_ray
from .protect import check_paths, check_provenance, default_window, nothing_to_do, plan, windows
from ..io.provenance import default_record_url, new_run_id, write_run_record
from ..io.shards import DEFAULT_LIMITS, ReadLimits, done_shards, shard_name
from ..io.storage import redact
from .windows import Writer, pack_units, protect_window

RUN_STATE_ACTOR = "mempipe-run-state"
FAULT_ENV = "MEMPIPE_FAULT_KILL_SHARD"  # fault injection for tests: a worker dies on this shard
SUMMARY_COLUMNS = ("shard", "protected", "failed", "units", "error", "stage", "retries")
__all__ = ["run_pipeline", "pack_units"]


@ray.remote(num_cpus=0)
class RunState:
    """Which shards an actor has begun and not finished (to find the culprit when one dies)."""

    def __init__(self) -> None:
        self.inflight: set[str] = set()

    def begin(self, shards: list[str]) -> None:
        self.inflight.update(shards)

    def end(self, shards: list[str]) -> None:
        self.inflight.difference_update(shards)

    def in_flight(self) -> list[str]:
        return sorted(self.inflight)


def _device(gpus_per_actor: float) -> str:
    return "cuda" if gpus_per_actor and torch.cuda.is_available() else "cpu"


@ray.remote(num_cpus=1)
def fit_task(urls, cfg: dict, settings: dict, record_url: str, run_id: str, storage_options, limits, device: str,
             clustered: bool, threads: int):
    """The fit phase on a worker (with a GPU when the actors have one), never on the driver."""
    torch.set_num_threads(max(1, threads))
    config = MEMConfig(**cfg)
    before = Counter(retry_counts)
    state = fitted_state(urls, config, settings, record_url, run_id, storage_options, limits, device, clustered)
    return {**fit_summary(state, record_url, config), "retries": dict(Counter(retry_counts) - before)}, state


class WindowProtector:
    """One window of shards per call: read, assign, protect, write (see :mod:`mempipe.run.windows`)."""

    def __init__(self, fit_ref: list, cfg: dict, image_format: str, writer: dict, limits: dict, gpus_per_actor: float,
                 threads: int, clustered: bool) -> None:
        torch.set_num_threads(max(1, threads))
        self.cfg = MEMConfig(**cfg)
        self.fmt = ImageFormat.parse(image_format)
        self.device = _device(gpus_per_actor)
        self.state: FitState = ray.get(fit_ref[0])
        self.writer = Writer(**writer)
        self.limits = ReadLimits(**limits)
        self.clustered = clustered
        self.run_state = ray.get_actor(RUN_STATE_ACTOR)

    def __call__(self, batch: dict) -> dict:
        rows = []
        for window in batch["window"]:
            urls = json.loads(window)
            names = [shard_name(u) for u in urls]
            ray.get(self.run_state.begin.remote(names))
            if os.environ.get(FAULT_ENV) in names:
                os._exit(17)
            results = protect_window(urls, self.state, self.cfg, self.fmt, self.writer, self.limits, self.device,
                                     self.clustered)
            rows += [r.row() for r in results]
            ray.get(self.run_state.end.remote(names))
        return {k: np.array([r[k] for r in rows]) for k in SUMMARY_COLUMNS}


# ---------------------------------------------------------------- driver

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
                 limits: ReadLimits = DEFAULT_LIMITS, break_lock: bool = False,
                 window: int | None = None) -> dict[str, Any]:
    input_url, output_url = _absolute(input_url), _absolute(output_url)
    record_url = _absolute(record_url) or default_record_url(output_url)
    check_paths(input_url, output_url, record_url)
    ImageFormat.parse(image_format)
    check_provenance(provenance)
    run_id = new_run_id()
    progress = RunProgress(0, enabled=show_progress)
    progress.phase("planning")
    shards, todo = plan(input_url, output_url, storage_options)
    if not todo:
        progress.close()
        return nothing_to_do(output_url, record_url, shards)
    settings = run_settings(cfg, image_format, partition, provenance)
    refuse_changed_settings(record_url, settings, storage_options)   # on the driver, before any work
    with OutputLock(output_url, run_id, storage_options).acquire(break_lock):
        return _run_locked(input_url, output_url, cfg, image_format, storage_options, partition, num_actors,
                           gpus_per_actor, ray_address, record_url, provenance, verbose, limits, run_id, shards,
                           todo, settings, window or default_window(partition), progress)


def _run_locked(input_url, output_url, cfg, image_format, storage_options, partition, num_actors, gpus_per_actor,
                ray_address, record_url, provenance, verbose, limits, run_id, shards, todo, settings, window,
                progress) -> dict[str, Any]:
    started = time.time()
    progress.total(len(todo))
    progress.phase("starting Ray")
    quiet_ray(verbose)
    init_ray(ray_address, num_actors, verbose)
    cores = os.cpu_count() or 1
    clustered = partition == "cluster"
    state_actor = RunState.options(name=RUN_STATE_ACTOR, get_if_exists=True).remote()
    progress.phase("fit")
    summary_ref, fit_ref = fit_task.options(num_gpus=gpus_per_actor, num_returns=2).remote(
        shards, cfg.to_dict(), settings, record_url, run_id, storage_options, limits, _device(gpus_per_actor),
        clustered, cores)
    try:
        fitted = ray.get(summary_ref)
    except ray.exceptions.RayTaskError as exc:   # the fit's storage failure, as one line (exit 3), not Ray's traceback
        with contextlib.suppress(ray.exceptions.RayTaskError):
            ray.get(fit_ref)   # the state's ref holds the same error: read, so Ray does not print it as unhandled
        if isinstance(exc.cause, StorageError):
            raise exc.cause from None
        raise
    retries = Counter(fitted.pop("retries"))   # what -> retries, the fit's and every window's
    counts = {"protected": 0, "failed": 0}
    failed_shards: list[dict] = []
    unit_logs: list[dict] = []

    def consume(summary) -> None:
        for row in summary.iter_rows():   # streaming: the bar moves as each shard is written
            retries.update(json.loads(row["retries"]))
            unit_logs.extend(json.loads(row["units"]))
            if row["error"]:
                failed_shards.append({"shard": row["shard"], "stage": row["stage"], "reason": row["error"]})
                progress.shard_done(0, 0)
                continue
            counts["protected"] += int(row["protected"])
            counts["failed"] += int(row["failed"])
            progress.shard_done(int(row["protected"]), int(row["failed"]))

    constructor = {"fit_ref": [fit_ref], "cfg": cfg.to_dict(), "image_format": image_format,
                   "writer": {"output_url": output_url, "record_url": record_url, "provenance": provenance,
                              "run_id": run_id, "storage_options": storage_options},
                   "limits": dataclasses.asdict(limits), "gpus_per_actor": gpus_per_actor, "clustered": clustered}
    progress.phase("protecting")
    work = windows(todo, window)
    _protect_windows(work, num_actors, cores, gpus_per_actor, constructor, state_actor, consume,
                     failed_shards, output_url, storage_options)
    ray.kill(state_actor)
    progress.phase("done")
    progress.close()
    record = {
        "mempipe_version": __version__, "run_id": run_id, "input": input_url, "output": output_url,
        "record": record_url, "provenance": provenance, "engine": "ray", "storage_options": redact(storage_options or {}),
        "config": cfg.to_dict(), "image_format": image_format,
        "partition": partition, "window": window, "num_actors": num_actors, "gpus_per_actor": gpus_per_actor,
        # torch threads x concurrent processes <= cores: the fit runs alone, then each actor gets its share
        "threads": {"cores": cores, "fit_task": cores, "per_actor": max(1, cores // max(1, min(num_actors, len(work))))},
        "shards_total": len(shards), "shards_done_before": len(shards) - len(todo),
        "shards_written": len(todo) - len(failed_shards), "shards_failed": failed_shards,
        "samples_protected": counts["protected"], "samples_failed": counts["failed"],
        "retries": dict(retries), **fitted, "units": unit_logs, "seconds": round(time.time() - started, 2),
    }
    write_run_record(output_url, record_url, record, provenance, storage_options)
    return record


def _protect_windows(items: list[list[str]], num_actors: int, cores: int, gpus_per_actor: float, constructor: dict,
                     state_actor, consume, failed_shards: list[dict], output_url: str,
                     storage_options: dict | None) -> None:
    """Stream the windows through an actor pool, surviving a worker that dies: the shards it had in
    flight are retried one at a time, alone; one that kills its worker again is quarantined (named in
    the run's failed shards, no stats file) and the run goes on."""
    remaining = list(items)
    suspects: list[str] = []
    while remaining or suspects:
        alone = not remaining
        batch = [[suspects.pop(0)]] if alone else remaining
        actors = 1 if alone else max(1, min(num_actors, len(batch)))
        ds = ray.data.from_items([{"window": json.dumps(w)} for w in batch], override_num_blocks=len(batch))
        summary = ds.map_batches(
            WindowProtector, batch_size=1, compute=_actor_pool(actors), num_gpus=gpus_per_actor, num_cpus=1,
            **NO_RESTARTS, fn_constructor_kwargs={**constructor, "threads": max(1, cores // actors)})
        try:
            consume(summary)
            remaining = []
        except Exception as exc:  # a worker died: Ray Data stops the whole dataset
            died = ray.get(state_actor.in_flight.remote())
            ray.get(state_actor.end.remote(died))
            if alone:
                failed_shards.append({"shard": shard_name(batch[0][0]), "stage": "protect", "reason":
                                      "quarantined: its worker died while protecting it, alone "
                                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"})
                continue
            if not died:
                raise
            done = done_shards(output_url, storage_options)
            reported = {f["shard"] for f in failed_shards}
            urls = [u for w in batch for u in w]
            suspects += [u for u in urls if shard_name(u) in died]
            left = [u for u in urls if shard_name(u) not in done | reported | set(died)]
            size = max(len(w) for w in batch)
            remaining = windows(left, size)
