"""``mempipe inspect``: what a protected output holds, and how visible the noise is."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np

from .images import decode_rgb, psnr, ssim
from .provenance import default_record_url, read_private_samples, read_run_record
from .shards import iter_shard, list_shards, shard_name
from .storage import filesystem, parse_storage_options


def summarize(output_url: str, original_url: str | None = None, storage_options: dict | None = None,
              grid_path: str | None = None, grid_count: int = 6, record_url: str | None = None) -> dict:
    """What the output holds; triggers and per-sample measures come from the private record when
    it is reachable (the published json carries them only under ``--provenance full``)."""
    record_url = record_url or default_record_url(output_url)
    private = read_private_samples(record_url, storage_options)
    originals: dict[str, str] = {}
    if original_url:
        originals = {shard_name(u): u for u in list_shards(original_url, storage_options)}
    methods, triggers, failed = Counter(), Counter(), 0
    max_delta, psnrs, ssims, grid = 0, [], [], []
    for url in list_shards(output_url, storage_options):
        name = shard_name(url)
        source = {}
        if name in originals:
            source = {s.key: s.image for s in iter_shard(originals[name], storage_options) if not s.error}
        for s in iter_shard(url, storage_options):
            if s.error:
                failed += 1
                continue
            m = {**s.meta.get("mempipe", {}), **private.get((name, s.key), {})}
            methods[m.get("method")] += 1
            if m.get("trigger"):
                triggers[m["trigger"]] += 1
            if s.key in source:
                a, _ = decode_rgb(s.image)
                b, _ = decode_rgb(source[s.key])
                if a.shape == b.shape:
                    max_delta = max(max_delta, int(np.abs(a.astype(int) - b.astype(int)).max()))
                    psnrs.append(psnr(a, b))
                    ssims.append(ssim(a, b))
                    if len(grid) < grid_count:
                        grid.append((b, a))
            else:
                max_delta = max(max_delta, int(m.get("max_delta", 0)))
    fs, prefix = filesystem(output_url, storage_options)
    parquet_failed = 0
    import pyarrow.parquet as pq

    for path in sorted(p for p in fs.find(prefix, maxdepth=1) if p.endswith(".parquet")):
        with fs.open(path, "rb") as f:
            parquet_failed += sum(1 for s in pq.read_table(f, columns=["status"]).column("status").to_pylist() if s != "success")
    record = read_run_record(output_url, record_url, storage_options)
    summary = {
        "samples": sum(methods.values()), "failed_recorded": parquet_failed, "methods": dict(methods),
        "distinct_triggers": len(triggers), "top_triggers": triggers.most_common(5), "max_delta": max_delta,
        "psnr_mean": round(float(np.mean([p for p in psnrs if np.isfinite(p)])), 3) if psnrs else None,
        "ssim_mean": round(float(np.mean(ssims)), 4) if ssims else None, "compared_with_original": len(psnrs),
        "config": record.get("config") if record else None,
        "private_record": record_url if private else None,
    }
    if grid_path and grid:
        save_grid(grid, grid_path)
        summary["grid"] = grid_path
    return summary


def save_grid(pairs: list[tuple[np.ndarray, np.ndarray]], path: str, amplify: int = 10) -> None:
    """Rows: original, protected, noise x amplify (centred on grey)."""
    from PIL import Image

    rows = []
    for original, protected in pairs:
        noise = np.clip(128 + amplify * (protected.astype(int) - original.astype(int)), 0, 255).astype(np.uint8)
        rows.append(np.concatenate([original, protected, noise], axis=1))
    height = max(r.shape[0] for r in rows)
    rows = [np.pad(r, ((0, height - r.shape[0]), (0, 0), (0, 0))) for r in rows]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    image = Image.fromarray(np.concatenate(rows, axis=0))
    scale = max(1, 256 // height)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)


def main_inspect(args) -> int:
    summary = summarize(args.output, args.original, parse_storage_options(args.storage_options), args.grid,
                        record_url=args.record)
    # one line per field: the engine config is one line of its own, not thirty
    print("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in summary.items()) + "\n}")
    return 0
