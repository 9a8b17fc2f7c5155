"""The Ray distributor: the fit as a Ray task, then windows of shards through a Ray Data actor pool.

    fit (a Ray task, with a GPU when the actors have one: sample, feature model, k-means, shared
    surrogate, triggers; saved to the private record) ─▶ windows of W shards, streamed through
    ``map_batches`` on an actor pool ─▶ one summary row per shard, consumed as it is written

Only window URLs and one summary row per shard pass through Ray's object store, so memory is
bounded by the window and finished shards appear while the run goes on. A named actor tracks
which shards are in flight: when a worker dies (a shard that exhausts memory or crashes a
decoder), those shards are retried alone, and one that kills its worker again is quarantined
while the run goes on.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import ray
import torch

from ..io.retry import StorageError
from ..io.shards import done_shards, shard_name
from .fit import FitRequest, FitState, run_fit
from .progress import quiet_ray
from .windows import ShardResult, WindowTask, cut_windows, protect_window

RUN_STATE_ACTOR = "mempipe-run-state"
FAULT_ENV = "MEMPIPE_FAULT_KILL_SHARD"  # fault injection for tests: a worker dies on this shard
SUMMARY_COLUMNS = ("shard", "protected", "failed", "units", "error", "stage", "retries")

# Ray Data keeps actor constructor arguments in the object store; with restarts on, a lost
# argument would make a restarted actor fail later. A failed actor fails the run instead, and
# a rerun resumes from the shards already written. Ray's map_batches has no named parameter for
# it: it goes through ray_remote_args (Ray Data's documented way), whose deprecation notice is silenced.
NO_RESTARTS = {"max_restarts": 0}
warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated", category=DeprecationWarning)


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


def device_for(gpus_per_actor: float) -> str:
    return "cuda" if gpus_per_actor and torch.cuda.is_available() else "cpu"


@ray.remote(num_cpus=1)
def fit_task(request: FitRequest, device: str, threads: int):
    """The fit phase on a worker (with a GPU when the actors have one), never on the driver."""
    torch.set_num_threads(max(1, threads))
    return run_fit(request, device)


class WindowProtector:
    """An actor of the pool: one window of shards per call (see :func:`mempipe.run.windows.protect_window`)."""

    def __init__(self, fit_ref: list, task: WindowTask, gpus_per_actor: float, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.task = task
        self.device = device_for(gpus_per_actor)
        self.state: FitState = ray.get(fit_ref[0])
        self.run_state = ray.get_actor(RUN_STATE_ACTOR)

    def __call__(self, batch: dict) -> dict:
        rows = []
        for window in batch["window"]:
            urls = json.loads(window)
            names = [shard_name(u) for u in urls]
            ray.get(self.run_state.begin.remote(names))
            if os.environ.get(FAULT_ENV) in names:
                os._exit(17)
            rows += [r.row() for r in protect_window(urls, self.state, self.task, self.device)]
            ray.get(self.run_state.end.remote(names))
        return {k: np.array([r[k] for r in rows]) for k in SUMMARY_COLUMNS}


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
    else:  # the embedded default: a local Ray. Logical CPUs are oversubscribed so that the fit task,
        # the actor pool and Ray Data's own tasks all find a slot at once; threads follow the real cores.
        cores = os.cpu_count() or 1
        python_path = os.pathsep.join(p for p in (_package_path(), os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=max(cores, 4 * num_actors + 8), include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=verbose, logging_level=logging_level,
                 runtime_env={"env_vars": {"PYTHONPATH": python_path}})


@dataclass
class RayActorPool:
    """Windows through an actor pool of up to ``num_actors`` actors, each with ``gpus_per_actor``."""

    num_actors: int = 2
    gpus_per_actor: float = 0.0
    address: str | None = None
    verbose: bool = False
    engine = "ray"

    def __post_init__(self) -> None:
        if self.num_actors < 1:
            raise ValueError("--num-actors must be at least 1")
        self.cores = os.cpu_count() or 1
        self.fit_ref = None

    def fit(self, request: FitRequest) -> dict[str, Any]:
        """Ray starts here, once the run knows it has work (a run with nothing to do starts nothing)."""
        quiet_ray(self.verbose)
        init_ray(self.address, self.num_actors, self.verbose)
        summary_ref, self.fit_ref = fit_task.options(num_gpus=self.gpus_per_actor, num_returns=2).remote(
            request, device_for(self.gpus_per_actor), self.cores)
        try:
            return ray.get(summary_ref)
        except ray.exceptions.RayTaskError as exc:   # the fit's storage failure as one line (exit 3), not a traceback
            with contextlib.suppress(ray.exceptions.RayTaskError):
                ray.get(self.fit_ref)   # the state's ref holds the same error: read, so Ray does not print it as unhandled
            if isinstance(exc.cause, StorageError):
                raise exc.cause from None
            raise

    def describe(self, windows: int) -> dict[str, Any]:
        # torch threads x concurrent processes <= cores: the fit runs alone, then each actor gets its share
        return {"num_actors": self.num_actors, "gpus_per_actor": self.gpus_per_actor,
                "threads": {"cores": self.cores, "fit_task": self.cores,
                            "per_actor": max(1, self.cores // max(1, min(self.num_actors, windows)))}}

    def protect(self, windows: list[list[str]], task: WindowTask) -> Iterator[ShardResult]:
        """Stream the windows through the pool, surviving a worker that dies: the shards it had in
        flight are retried one at a time, alone; one that kills its worker again is quarantined (a
        failed shard, no stats file) and the run goes on."""
        state_actor = RunState.options(name=RUN_STATE_ACTOR, get_if_exists=True).remote()
        remaining, suspects, reported = list(windows), [], set()
        try:
            while remaining or suspects:
                alone = not remaining
                batch = [[suspects.pop(0)]] if alone else remaining
                try:
                    for result in self._stream(batch, task, 1 if alone else min(self.num_actors, len(batch))):
                        reported.add(result.shard)
                        yield result
                    remaining = []
                except Exception as exc:  # a worker died: Ray Data stops the whole dataset
                    died = ray.get(state_actor.in_flight.remote())
                    ray.get(state_actor.end.remote(died))
                    if alone:
                        yield ShardResult(shard_name(batch[0][0]), error="quarantined: its worker died while "
                                          f"protecting it, alone ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
                                          stage="protect")
                        continue
                    if not died:
                        raise
                    done = done_shards(task.writer.output_url, task.writer.storage_options)
                    urls = [u for w in batch for u in w]
                    suspects += [u for u in urls if shard_name(u) in died]
                    left = [u for u in urls if shard_name(u) not in done | reported | set(died)]
                    remaining = cut_windows(left, max(len(w) for w in batch))
        finally:
            ray.kill(state_actor)

    def _stream(self, batch: list[list[str]], task: WindowTask, actors: int) -> Iterator[ShardResult]:
        ds = ray.data.from_items([{"window": json.dumps(w)} for w in batch], override_num_blocks=len(batch))
        summary = ds.map_batches(
            WindowProtector, batch_size=1, num_gpus=self.gpus_per_actor, num_cpus=1, **NO_RESTARTS,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors)),   # starts with one: never waits
            fn_constructor_kwargs={"fit_ref": [self.fit_ref], "task": task, "gpus_per_actor": self.gpus_per_actor,
                                   "threads": max(1, self.cores // actors)})
        for row in summary.iter_rows():   # streaming: each shard's result as it is written
            yield ShardResult.from_row(row)
