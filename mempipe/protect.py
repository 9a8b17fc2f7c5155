"""``mempipe protect`` in one process: shards in, MEM per work unit, shards out.

The engine sees tensors only; this module does the reading, decoding, native-resolution
noise mapping, encoding, verification and writing around it. Work units are groups of
consecutive shards cut into chunks of at most ``unit_size`` samples, each with its own
surrogate, so memory follows the unit size, not the dataset.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .engine import MEMConfig, protect_unit
from .engine.mem import train_shared_surrogate, unit_config
from .engine.surrogate import ClipModel, build_model
from .engine.text import decode_trigger, insert_words
from .images import (ImageError, ImageFormat, apply_noise_native, decode_rgb, encode, image_pixels, max_abs_delta, psnr,
                     to_surrogate_input)
from .locations import check_locations
from .locks import OutputLock
from .retry import StorageError, retry_counts
from .shards import (DEFAULT_LIMITS, RawSample, ReadLimits, ShardOutput, done_shards, list_shards, read_samples,
                     shard_name, write_shard)
from .provenance import (default_record_url, load_surrogate_state, new_run_id, publish, save_surrogate, surrogate_url,
                         write_private_samples, write_run_record)
from .storage import redact


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
    done: dict[str, ShardOutput] = field(default_factory=dict)


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
    result = protect_unit(surrogate_batch(items, cfg.image_size), [d.raw.caption for d in items], unit_config(cfg),
                          device=device, progress=on_round, clusters=clusters, fixed_trigger=fixed_trigger,
                          surrogate=surrogate)
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


def shared_surrogate(cfg: MEMConfig, record_url: str, sample: list[Decoded], device: str,
                     storage_options: dict | None) -> tuple[ClipModel, dict]:
    """The run's surrogate: loaded from the private record when an earlier run on this output
    trained it (incremental runs protect against the same model), else trained once by the
    min-min loop on ``sample`` and saved there as an open_clip checkpoint."""
    started = time.time()
    state = load_surrogate_state(record_url, storage_options)
    info = {"mode": "shared", "unit_train_steps": cfg.unit_train_steps}
    if state is not None:
        model = build_model(cfg.arch, cfg.image_size, cfg.context_length)
        model.clip.load_state_dict(state)
        info["trained_this_run"] = False
    else:
        model = train_shared_surrogate(surrogate_batch(sample, cfg.image_size), [d.raw.caption for d in sample], cfg,
                                       device).cpu()
        info.update(trained_this_run=True, sample=len(sample))
    info["checkpoint"] = (save_surrogate(record_url, model.clip.state_dict(), storage_options) if state is None
                          else surrogate_url(record_url))
    info["seconds"] = round(time.time() - started, 2)
    return model.eval(), info


def _groups(todo: list[str], storage_options: dict | None, unit_size: int, limits: ReadLimits, image_size: int,
            failed_shards: list[dict]) -> Iterator[list[ShardWork]]:
    """Consecutive shards, read until they hold at least one unit's worth of samples. A shard
    whose storage keeps failing is named in ``failed_shards`` and left without a stats file."""
    buffer: list[ShardWork] = []
    for url in todo:
        try:
            buffer.append(read_shard(url, storage_options, limits, image_size))
        except StorageError as exc:
            failed_shards.append({"shard": shard_name(url), "stage": "read", "reason": str(exc)})
            continue
        if sum(len(w.decoded) for w in buffer) >= unit_size:
            yield buffer
            buffer = []
    if buffer:
        yield buffer


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


def protect(input_url: str, output_url: str, cfg: MEMConfig, image_format: str = "png",
            storage_options: dict | None = None, device: str | None = None, show_progress: bool = True,
            record_url: str | None = None, provenance: str = "public", limits: ReadLimits = DEFAULT_LIMITS,
            break_lock: bool = False) -> dict[str, Any]:
    """Protect every shard under ``input_url`` not already complete under ``output_url``."""
    record_url = record_url or default_record_url(output_url)
    check_paths(input_url, output_url, record_url)
    if provenance not in ("public", "full"):
        raise ValueError(f"--provenance is public or full, got {provenance!r}")
    run_id = new_run_id()
    fmt = ImageFormat.parse(image_format)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    shards, todo = plan(input_url, output_url, storage_options)
    with OutputLock(output_url, run_id, storage_options).acquire(break_lock):
        return _protect_locked(input_url, output_url, cfg, fmt, image_format, storage_options, device, show_progress,
                               record_url, provenance, limits, run_id, shards, todo)


def _protect_locked(input_url, output_url, cfg, fmt, image_format, storage_options, device, show_progress, record_url,
                    provenance, limits, run_id, shards, todo) -> dict[str, Any]:
    started = time.time()
    retries_before = Counter(retry_counts)
    counts = Counter()
    units: list[dict] = []
    failed_shards: list[dict] = []
    bar = tqdm(total=len(todo), desc="shards", unit="shard", disable=not show_progress)
    surrogate, surrogate_info = None, {"mode": cfg.surrogate}
    for group in _groups(todo, storage_options, cfg.unit_size, limits, cfg.image_size, failed_shards):
        decoded = [d for w in group for d in w.decoded]
        if cfg.surrogate == "shared" and surrogate is None and cfg.method != "random" and decoded:
            surrogate, surrogate_info = shared_surrogate(cfg, record_url, decoded[: cfg.unit_size], device,
                                                         storage_options)
        owner = {d.raw.key + "\0" + w.name: w for w in group for d in w.decoded}
        for number, chunk in enumerate(split_units(decoded, cfg.unit_size)):
            unit_id = f"{group[0].name}-{number}"
            rounds = tqdm(total=cfg.outer_iters if cfg.method != "random" else 1, desc=f"unit {unit_id}",
                          unit="round", leave=False, disable=not show_progress)

            def on_round(entry: dict) -> None:
                rounds.update(1)
                rounds.set_postfix(surrogate=f"{entry['surrogate_loss']:.3f}", pgd=f"{entry.get('pgd_loss_last', float('nan')):.3f}")

            outputs, summary = run_unit(chunk, cfg, fmt, unit_id, device, on_round, surrogate=surrogate)
            rounds.close()
            units.append(summary)
            for d, out in zip(chunk, outputs):
                owner[d.raw.key + "\0" + d.raw.shard].done[out.key] = out
        for work in group:
            ordered = [work.done[d.raw.key] for d in work.decoded] + work.failed
            try:
                stats = write_protected_shard(output_url, record_url, work.name, ordered, cfg, provenance, run_id,
                                              storage_options)
            except StorageError as exc:
                failed_shards.append({"shard": work.name, "stage": "write", "reason": str(exc)})
                continue
            counts["protected"] += stats["successes"]
            counts["failed"] += stats["failed"]
            bar.update(1)
    bar.close()
    record = {
        "mempipe_version": __version__, "run_id": run_id, "input": input_url, "output": output_url,
        "record": record_url, "provenance": provenance,
        "storage_options": redact(storage_options or {}), "config": cfg.to_dict(), "image_format": image_format,
        "device": device, "shards_total": len(shards), "shards_done_before": len(shards) - len(todo),
        "shards_written": len(todo) - len(failed_shards), "shards_failed": failed_shards,
        "samples_protected": counts["protected"], "samples_failed": counts["failed"],
        "retries": dict(Counter(retry_counts) - retries_before),
        "seconds": round(time.time() - started, 2), "units": units, "surrogate": surrogate_info,
    }
    write_run_record(output_url, record_url, record, provenance, storage_options)
    return record
