"""``mempipe protect`` in one process: shards in, MEM per work unit, shards out.

The engine sees tensors only; this module does the reading, decoding, native-resolution
noise mapping, encoding, verification and writing around it. Work units are groups of
consecutive shards cut into chunks of at most ``unit_size`` samples, each with its own
surrogate, so memory follows the unit size, not the dataset.
"""
from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..engine import MEMConfig, protect_unit
from ..engine.mem import unit_config
from ..engine.surrogate import ClipModel, ensemble_models
from ..engine.text import decode_trigger, insert_words
from ..io.images import (ImageError, ImageFormat, apply_noise_native, decode_rgb, encode, image_pixels, max_abs_delta, psnr,
                     to_surrogate_input)
from ..io.locations import check_locations
from ..io.locks import OutputLock
from ..io.retry import retry_counts
from ..io.shards import (DEFAULT_LIMITS, RawSample, ReadLimits, ShardOutput, done_shards, list_shards, read_samples,
                     shard_name, write_shard)
from ..io.provenance import default_record_url, new_run_id, publish, write_private_samples, write_run_record
from ..io.storage import redact


@dataclass
class Decoded:
    """A readable sample. Only its encoded bytes and the small surrogate-size input are held;
    full-resolution pixels are decoded again when the noise is applied, so a shard's memory is
    its compressed size, not its decoded size."""

    raw: RawSample
    source_mode: str
    surrogate_input: np.ndarray | None = None  # S x S x 3 uint8 at the run's image size

    @property
    def pixels(self) -> np.ndarray:
        return decode_rgb(self.raw.image)[0]


@dataclass
class ShardWork:
    name: str
    failed: list[ShardOutput] = field(default_factory=list)
    decoded: list[Decoded] = field(default_factory=list)


class PixelBudget:
    """Decoded pixels one shard may cost (checked from image headers, before decoding)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def charge(self, pixels: int) -> str | None:
        if self.used + pixels > self.limit:
            return (f"shard pixel budget exhausted: this image ({pixels} px) would bring the shard past "
                    f"{self.limit} decoded pixels (raise --max-shard-megapixels or split the shard)")
        self.used += pixels
        return None


def check_paths(input_url: str, output_url: str, record_url: str | None = None) -> None:
    """Input, output and private record never overlap, however they are spelled."""
    check_locations(input_url, output_url, record_url or default_record_url(output_url))


def read_shard(url: str, storage_options: dict | None, limits: ReadLimits = DEFAULT_LIMITS,
               image_size: int | None = None) -> ShardWork:
    """One shard read (storage errors retried; :class:`StorageError` when they persist) and decoded."""
    work = ShardWork(shard_name(url))
    budget = PixelBudget(limits.max_shard_pixels)
    for raw in read_samples(url, storage_options, limits):
        item = decode_sample(raw, image_size, budget)
        (work.decoded if isinstance(item, Decoded) else work.failed).append(item)
    return work


def split_units(items: list[Decoded], unit_size: int) -> list[list[Decoded]]:
    """Balanced chunks of at most unit_size (2,500 samples at 2,048 become two of 1,250)."""
    if not items:
        return []
    parts = math.ceil(len(items) / unit_size)
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def finish_sample(item: Decoded, noise: np.ndarray, trigger_ids: list[int], cluster: int | None, cfg: MEMConfig,
                  fmt: ImageFormat, unit_id: str, trigger_word: int = 0) -> ShardOutput:
    """Native-resolution noise, bound check, encoding, and the output caption and json."""
    raw = item.raw
    pixels = item.pixels
    protected = apply_noise_native(pixels, noise, cfg.epsilon)
    bound = max_abs_delta(protected, pixels)
    if bound > cfg.epsilon:  # apply_noise_native clamps, so this is a bug guard, never a normal path
        return ShardOutput(raw.key, None, None, raw.caption, raw.meta, f"noise bound violated: {bound} > {cfg.epsilon}")
    ext = fmt.extension(raw.image_ext)
    data = encode(protected, ext, fmt.quality)
    written, _ = decode_rgb(data)
    trigger = decode_trigger(trigger_ids) if trigger_ids else ""
    caption = insert_words(raw.caption, trigger, trigger_word)
    meta = dict(raw.meta)
    meta["mempipe"] = {
        "version": __version__, "method": cfg.method, "epsilon": cfg.epsilon,
        "trigger_scope": cfg.trigger_scope if trigger else None, "trigger": trigger or None,
        "trigger_word_index": trigger_word if trigger else None,
        "noise_scope": cfg.effective_noise_scope, "cluster": cluster, "unit": unit_id,
        "max_delta": max_abs_delta(written, pixels), "psnr": round(psnr(written, pixels), 3),
        "image_format": ext if fmt.kind != "jpeg" else f"jpeg:{fmt.quality}",
        "source_mode": item.source_mode,
    }
    if raw.warnings:
        meta["mempipe"]["warnings"] = raw.warnings
    if "caption" in meta:
        meta["caption"] = caption
    return ShardOutput(raw.key, data, ext, caption, meta)


def surrogate_batch(items: list[Decoded], size: int) -> torch.Tensor:
    """N x 3 x S x S uint8: every image as the victim's preprocessing would show it."""
    def one(d: Decoded) -> np.ndarray:
        if d.surrogate_input is not None and d.surrogate_input.shape[0] == size:
            return d.surrogate_input
        return to_surrogate_input(d.pixels, size)

    return torch.from_numpy(np.stack([one(d) for d in items])).permute(0, 3, 1, 2).contiguous()


def decode_sample(raw: RawSample, image_size: int | None = None, budget: PixelBudget | None = None) -> Decoded | ShardOutput:
    """A readable sample (with its surrogate-size input when ``image_size`` is given), or its failure record."""
    if raw.error:
        return ShardOutput(raw.key, None, None, raw.caption, raw.meta, raw.error)
    if budget is not None:
        refusal = budget.charge(image_pixels(raw.image))
        if refusal:
            return ShardOutput(raw.key, None, None, raw.caption, raw.meta, refusal)
    try:
        pixels, mode = decode_rgb(raw.image)
    except ImageError as exc:
        return ShardOutput(raw.key, None, None, raw.caption, raw.meta, str(exc))
    return Decoded(raw, mode, to_surrogate_input(pixels, image_size) if image_size else None)


def run_unit(items: list[Decoded], cfg: MEMConfig, fmt: ImageFormat, unit_id: str, device: str,
             on_round=None, clusters: torch.Tensor | None = None,
             fixed_trigger: torch.Tensor | None = None,
             surrogate: ClipModel | None = None) -> tuple[list[ShardOutput], dict]:
    """Engine + finishing for one unit; returns outputs and the unit's log/trigger summary.
    ``surrogate``: the run's shared surrogate (``cfg.surrogate == "shared"``), fine-tuned per unit."""
    result = protect_unit(surrogate_batch(items, cfg.stored_size), [d.raw.caption for d in items], unit_config(cfg),
                          device=device, progress=on_round, clusters=clusters, fixed_trigger=fixed_trigger,
                          surrogate=surrogate, ensemble=ensemble_models(cfg.ensemble))
    noise = result.noise.permute(0, 2, 3, 1).numpy()
    triggers = result.trigger_ids.tolist()
    clusters = None if result.cluster_ids is None else result.cluster_ids.tolist()
    words = [0] * len(items) if result.trigger_word_index is None else result.trigger_word_index.tolist()
    outputs = [finish_sample(d, noise[i], triggers[i], None if clusters is None else clusters[i], cfg, fmt, unit_id,
                             words[i]) for i, d in enumerate(items)]
    trigger_texts = Counter(decode_trigger(t) for t in triggers if t)
    summary = {"unit": unit_id, "samples": len(items), "log": result.log,
               "distinct_triggers": len(trigger_texts), "top_triggers": trigger_texts.most_common(10)}
    if result.centroids is not None:
        summary["centroids_shape"] = list(result.centroids.shape)
    return outputs, summary


def write_protected_shard(output_url: str, record_url: str, name: str, outputs: list[ShardOutput], cfg: MEMConfig,
                          provenance: str, run_id: str, storage_options: dict | None) -> dict[str, Any]:
    """The private per-sample record first, then the shard as published (its stats file last)."""
    published, private = publish(outputs, provenance, run_id)
    write_private_samples(record_url, name, private, storage_options)
    return write_shard(output_url, name, published, storage_options=storage_options,
                       extra_stats={"method": cfg.method, "input_shard": name, "run_id": run_id})


def plan(input_url: str, output_url: str, storage_options: dict | None) -> tuple[list[str], list[str]]:
    """(every input shard, the ones not yet done): done shards come from one listing of the output."""
    shards = list_shards(input_url, storage_options)
    if not shards:
        raise FileNotFoundError(f"no .tar shards under {input_url}")
    done = done_shards(output_url, storage_options)
    return shards, [s for s in shards if shard_name(s) not in done]


def windows(todo: list[str], size: int) -> list[list[str]]:
    """Work items: consecutive input shards, ``size`` at a time."""
    return [todo[i:i + size] for i in range(0, len(todo), max(1, size))]


def new_version(output_url: str, record_url: str | None, storage_options: dict | None) -> tuple[str, str]:
    """The first free ``OUTPUT.vN`` (N = 2, 3, ...) and its record, for a run with other settings."""
    from ..io.storage import filesystem

    base = output_url.rstrip("/")
    for n in range(2, 1000):
        candidate = f"{base}.v{n}"
        fs, path = filesystem(candidate, storage_options)
        if not fs.exists(path):
            record = f"{record_url.rstrip('/')}.v{n}" if record_url else default_record_url(candidate)
            return candidate, record
    raise ValueError(f"no free version of {output_url} below .v1000")


def check_provenance(provenance: str) -> None:
    if provenance not in ("public", "full"):
        raise ValueError(f"--provenance is public or full, got {provenance!r}")


def nothing_to_do(output_url: str, record_url: str, shards: list[str]) -> dict[str, Any]:
    """The result of a run that found every shard done: the run records are left as they were."""
    return {"output": output_url, "record": record_url, "shards_total": len(shards), "shards_written": 0,
            "shards_failed": [], "samples_protected": 0, "samples_failed": 0, "seconds": 0.0,
            "nothing_to_do": f"{len(shards)} of {len(shards)} shards already done, skipped"}


def protect(input_url: str, output_url: str, cfg: MEMConfig, image_format: str = "png",
            storage_options: dict | None = None, device: str | None = None, show_progress: bool = True,
            record_url: str | None = None, provenance: str = "public", limits: ReadLimits = DEFAULT_LIMITS,
            break_lock: bool = False, partition: str = "shard", window: int | None = None) -> dict[str, Any]:
    """Protect, in this process, every shard under ``input_url`` not already complete under ``output_url``:
    fit once (or load the fit from the record), then protect window by window."""
    from .fit import fit_summary, fitted_state, run_settings
    from .windows import Writer, protect_window

    record_url = record_url or default_record_url(output_url)
    check_paths(input_url, output_url, record_url)
    check_provenance(provenance)
    run_id = new_run_id()
    fmt = ImageFormat.parse(image_format)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    shards, todo = plan(input_url, output_url, storage_options)
    if not todo:
        return nothing_to_do(output_url, record_url, shards)
    clustered = partition == "cluster"
    window = window or default_window(partition)
    with OutputLock(output_url, run_id, storage_options).acquire(break_lock):
        started = time.time()
        retries_before = Counter(retry_counts)
        settings = run_settings(cfg, image_format, partition, provenance)
        state = fitted_state(shards, cfg, settings, record_url, run_id, storage_options, limits, device, clustered)
        writer = Writer(output_url, record_url, provenance, run_id, storage_options)
        counts, units, failed_shards = Counter(), [], []
        bar = tqdm(total=len(todo), desc="shards", unit="shard", disable=not show_progress)
        for urls in windows(todo, window):
            for result in protect_window(urls, state, cfg, fmt, writer, limits, device, clustered):
                units += result.units
                if result.error:
                    failed_shards.append({"shard": result.shard, "stage": result.stage, "reason": result.error})
                else:
                    counts["protected"] += result.protected
                    counts["failed"] += result.failed
                bar.update(1)
        bar.close()
        record = {
            "mempipe_version": __version__, "run_id": run_id, "engine": "local", "input": input_url,
            "output": output_url, "record": record_url, "provenance": provenance, "partition": partition,
            "window": window, "storage_options": redact(storage_options or {}), "config": cfg.to_dict(),
            "image_format": image_format, "device": device, "threads": {"torch": torch.get_num_threads(),
                                                                          "processes": 1, "cores": os.cpu_count()},
            "shards_total": len(shards), "shards_done_before": len(shards) - len(todo),
            "shards_written": len(todo) - len(failed_shards), "shards_failed": failed_shards,
            "samples_protected": counts["protected"], "samples_failed": counts["failed"],
            "retries": dict(Counter(retry_counts) - retries_before), **fit_summary(state, record_url, cfg),
            "seconds": round(time.time() - started, 2), "units": units,
        }
        write_run_record(output_url, record_url, record, provenance, storage_options)
        return record


def default_window(partition: str) -> int:
    """Shards per work item: one for the shard partition; for clusters, enough shards that a
    window's clusters fill units (see docs/performance.md for the measurement)."""
    return 1 if partition == "shard" else WINDOW_CLUSTER


WINDOW_CLUSTER = 8
