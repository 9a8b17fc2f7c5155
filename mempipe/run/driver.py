"""The one run: check, plan, nothing-to-do, settings, lock, fit, windows, tally, record.

    RunRequest ─▶ check paths ─▶ plan (one listing of input and output) ─▶ nothing to do?
      ─▶ refuse changed settings ─▶ take the output lock ─▶ distributor.fit
      ─▶ distributor.protect(windows) ─▶ ShardResult per shard (tallied as they come)
      ─▶ RunRecord, written to the private record and (public fields) the output root

Where the work runs is the distributor's only concern: :class:`~mempipe.run.in_process.InProcess`
protects the windows in this process, :class:`~mempipe.run.ray_pool.RayActorPool` on a Ray actor
pool. Both run the same fit and the same :func:`~mempipe.run.windows.protect_window`.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from .. import __version__
from ..engine import MEMConfig
from ..io.images import ImageFormat
from ..io.locations import check_locations
from ..io.locks import OutputLock
from ..io.provenance import PROVENANCE, as_dict, default_record_url, new_run_id, public_field, write_run_record
from ..io.shards import DEFAULT_LIMITS, ReadLimits, done_shards, list_shards, shard_name
from ..io.storage import filesystem, redact
from .fit import FitRequest, refuse_changed_settings, run_settings
from .progress import RunProgress
from .windows import ShardResult, WindowTask, Writer, cut_windows

WINDOW_CLUSTER = 8   # shards per window for the cluster partition (see docs/performance.md)


@dataclass(frozen=True)
class RunRequest:
    """What a user asks of a run; parsed and checked once, here."""

    input_url: str
    output_url: str
    cfg: MEMConfig
    image_format: str = "png"
    storage_options: dict | None = None
    record_url: str | None = None
    provenance: str = "public"
    limits: ReadLimits = DEFAULT_LIMITS
    partition: str = "shard"
    window: int | None = None
    break_lock: bool = False
    fmt: ImageFormat = field(init=False, repr=False)   # image_format, parsed

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_url", absolute(self.input_url))
        object.__setattr__(self, "output_url", absolute(self.output_url))
        object.__setattr__(self, "record_url", absolute(self.record_url) or default_record_url(self.output_url))
        if self.provenance not in PROVENANCE:
            raise ValueError(f"--provenance is public or full, got {self.provenance!r}")
        if self.partition not in ("shard", "cluster"):
            raise ValueError(f"--partition is shard or cluster, got {self.partition!r}")
        if self.window is not None and self.window < 1:
            raise ValueError("--window must be at least 1")
        object.__setattr__(self, "fmt", ImageFormat.parse(self.image_format))
        check_locations(self.input_url, self.output_url, self.record_url)

    @property
    def clustered(self) -> bool:
        return self.partition == "cluster"

    @property
    def shards_per_window(self) -> int:
        return self.window or (1 if self.partition == "shard" else WINDOW_CLUSTER)


def absolute(url: str | None) -> str | None:
    """Local paths made absolute: workers may run in another folder (or on another node)."""
    if url is None or "://" in url or "::" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


@dataclass
class RunRecord:
    """The run record: all of it goes to the private record; the fields marked public (counts and
    timing, no settings) to ``mempipe_run.json`` at the output root."""

    mempipe_version: str = public_field()
    run_id: str = public_field()
    engine: str = public_field()
    partition: str = public_field()
    input: str = ""
    output: str = ""
    record: str = ""
    provenance: str = "public"
    image_format: str = ""
    window: int = 1
    storage_options: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    distribution: dict = field(default_factory=dict)   # the distributor's own: device, threads, actors
    shards_total: int = public_field(default=0)
    shards_done_before: int = public_field(default=0)
    shards_written: int = public_field(default=0)
    shards_failed: list[dict] = public_field(default_factory=list)
    samples_protected: int = public_field(default=0)
    samples_failed: int = public_field(default=0)
    retries: dict[str, int] = public_field(default_factory=dict)
    seconds: float = public_field(default=0.0)
    nothing_to_do: str | None = None
    # the fit the run used (see run.fit.fit_summary): the settings' hash, the shared state, how it was made
    config_hash: str | None = None
    fit: dict | None = None
    trigger_table: dict | None = None
    trigger_text: dict | None = None
    centroids: list | None = None
    surrogate: dict | None = None
    units: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)


class Distributor(Protocol):
    """Maps windows of shards to shard results; knows nothing of plans, locks or records."""

    engine: str

    def fit(self, request: FitRequest) -> dict[str, Any]:
        """Fit (or load the record's fit) where the windows will run; returns the fit's summary."""

    def protect(self, windows: list[list[str]], task: WindowTask) -> Iterator[ShardResult]:
        """Every shard of every window exactly once, as each is written."""

    def describe(self, windows: int) -> dict[str, Any]:
        """The distributor's own part of the run record."""


def plan(request: RunRequest) -> tuple[list[str], list[str]]:
    """(every input shard, the ones not yet done): done shards come from one listing of the output."""
    shards = list_shards(request.input_url, request.storage_options)
    if not shards:
        raise FileNotFoundError(f"no .tar shards under {request.input_url}")
    done = done_shards(request.output_url, request.storage_options)
    return shards, [s for s in shards if shard_name(s) not in done]


def new_version(output_url: str, record_url: str | None, storage_options: dict | None) -> tuple[str, str]:
    """The first free ``OUTPUT.vN`` (N = 2, 3, ...) and its record, for a run with other settings."""
    base = output_url.rstrip("/")
    for n in range(2, 1000):
        candidate = f"{base}.v{n}"
        fs, path = filesystem(candidate, storage_options)
        if not fs.exists(path):
            record = f"{record_url.rstrip('/')}.v{n}" if record_url else default_record_url(candidate)
            return candidate, record
    raise ValueError(f"no free version of {output_url} below .v1000")


def run(request: RunRequest, distributor: Distributor, progress: RunProgress | None = None) -> RunRecord:
    """Protect every shard under the request's input not already complete under its output."""
    progress = progress or RunProgress(0, enabled=False)
    run_id = new_run_id()
    progress.phase("planning")
    shards, todo = plan(request)
    record = RunRecord(__version__, run_id, distributor.engine, request.partition, request.input_url, request.output_url,
                     request.record_url, request.provenance, request.image_format, request.shards_per_window,
                     redact(request.storage_options or {}), request.cfg.to_dict(), shards_total=len(shards),
                     shards_done_before=len(shards) - len(todo))
    if not todo:
        progress.close()
        record.nothing_to_do = f"{len(shards)} of {len(shards)} shards already done, skipped"
        return record
    settings = run_settings(request.cfg, request.image_format, request.partition, request.provenance)
    refuse_changed_settings(request.record_url, settings, request.storage_options)   # before the lock, before any work
    with OutputLock(request.output_url, run_id, request.storage_options).acquire(request.break_lock):
        started = time.time()
        progress.total(len(todo))
        progress.phase("fit")
        fitted = distributor.fit(FitRequest(shards, request.cfg, settings, request.record_url, run_id,
                                            request.storage_options, request.limits, request.clustered))
        retries = Counter(fitted.pop("retries"))
        writer = Writer(request.output_url, request.record_url, request.provenance, run_id, request.storage_options)
        task = WindowTask(request.cfg, request.fmt, writer, request.limits, request.clustered)
        work = cut_windows(todo, request.shards_per_window)
        progress.phase("protecting")
        for result in distributor.protect(work, task):
            retries.update(result.retries)
            record.units += result.units
            if result.error:
                record.shards_failed.append({"shard": result.shard, "stage": result.stage, "reason": result.error})
            record.samples_protected += result.protected
            record.samples_failed += result.failed
            progress.shard_done(result.protected, result.failed)
        progress.phase("done")
        progress.close()
        record.shards_written = len(todo) - len(record.shards_failed)
        for name, value in fitted.items():
            setattr(record, name, value)
        record.retries, record.distribution = dict(retries), distributor.describe(len(work))
        record.seconds = round(time.time() - started, 2)
        write_run_record(request.output_url, request.record_url, record, request.storage_options)
        return record
