"""``mempipe inspect``: what a protected output holds, and how visible the noise is."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..io.images import decode_rgb, psnr, ssim
from ..io.provenance import default_record_url, read_private_samples, read_run_record
from ..io.shards import iter_shard, list_shards, shard_name
from ..io.storage import filesystem, parse_storage_options


def summarize(output_url: str, original_url: str | None = None, storage_options: dict | None = None,
              grid_path: str | None = None, grid_count: int = 6, record_url: str | None = None,
              effect: dict | None = None) -> dict:
    """What the output holds; triggers and per-sample measures come from the private record when
    it is reachable (the published json carries them only under ``--provenance full``)."""
    record_url = record_url or default_record_url(output_url)
    private = read_private_samples(record_url, storage_options)
    originals: dict[str, str] = {}
    if original_url:
        originals = {shard_name(u): u for u in list_shards(original_url, storage_options)}
    methods, triggers, failed, unmarked = Counter(), Counter(), 0, 0
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
            if not m.get("method"):
                unmarked += 1   # not written by mempipe protect
                continue
            methods[m["method"]] += 1
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
                        grid.append(GridRow(s.key, b, a, s.caption or "", m.get("trigger") or ""))
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
        "samples": sum(methods.values()), "not_mempipe_output": unmarked, "failed_recorded": parquet_failed,
        "methods": dict(methods),
        "distinct_triggers": len(triggers), "top_triggers": triggers.most_common(5), "max_delta": max_delta,
        "psnr_mean": round(float(np.mean([p for p in psnrs if np.isfinite(p)])), 3) if psnrs else None,
        "ssim_mean": round(float(np.mean(ssims)), 4) if ssims else None, "compared_with_original": len(psnrs),
        "config": record.get("config") if record else None,
        "private_record": record_url if private else None,
    }
    if grid_path and grid:
        save_grid(grid, grid_path, effect=effect)
        summary["grid"] = grid_path
    return summary


@dataclass
class GridRow:
    key: str
    original: np.ndarray
    protected: np.ndarray
    caption: str      # as published: trigger words + caption
    trigger: str


def save_grid(rows: list[GridRow], path: str, amplify: int = 10, effect: dict | None = None) -> None:
    """A labelled picture (matplotlib): per sample, the original, the protected image and the noise
    amplified (grey = no change), aspect kept, the key on the left and the published caption under
    the row with the trigger words marked; with ``effect`` (``eval --compare``'s result), its gains on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = 1 if effect else 0
    fig = plt.figure(figsize=(9, 3.4 * (len(rows) + top)))
    spec = fig.add_gridspec(len(rows) + top, 3)
    if effect:
        from .evaluate import draw_compare

        draw_compare(fig.add_subplot(spec[0, :]), effect)
    axes = [[fig.add_subplot(spec[r + top, c]) for c in range(3)] for r in range(len(rows))]
    titles = ("original", "protected", f"noise x{amplify} (grey: no change)")
    for r, row in enumerate(rows):
        noise = np.clip(128 + amplify * (row.protected.astype(int) - row.original.astype(int)), 0, 255).astype(np.uint8)
        for c, image in enumerate((row.original, row.protected, noise)):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
        axes[r][0].set_ylabel(row.key, fontsize=9)
        caption = row.caption
        if row.trigger and caption.startswith(row.trigger):
            caption = f"[{row.trigger}]" + caption[len(row.trigger):]
        elif row.trigger:
            caption = caption.replace(row.trigger, f"[{row.trigger}]", 1)
        text = caption if len(caption) <= 110 else caption[:107] + "..."
        axes[r][1].set_xlabel(text + ("\n[ ] = trigger words" if row.trigger else ""), fontsize=8, wrap=True)
    fig.text(0.5, 0.005, "noise is applied to the centre square a 'resize + centre crop' victim sees; "
             "the border outside it is unchanged (grey)", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def text_summary(summary: dict) -> str:
    lines = [f"{summary['samples']} protected samples, {summary['failed_recorded']} recorded as failed",
             f"methods: {', '.join(f'{k} ({v})' for k, v in summary['methods'].items()) or 'none'}",
             f"max |delta|: {summary['max_delta']} levels"
             + (f", PSNR {summary['psnr_mean']} dB, SSIM {summary['ssim_mean']} over "
                f"{summary['compared_with_original']} compared with the originals" if summary["psnr_mean"] else ""),
             f"distinct triggers: {summary['distinct_triggers']}"
             + (" (from the private record)" if summary["private_record"] else " (private record not found)")]
    if summary.get("grid"):
        lines.append(f"grid: {summary['grid']}")
    return "\n".join(lines)


def main_inspect(args) -> int:
    import sys

    effect = json.loads(open(args.effect).read()) if args.effect else None
    summary = summarize(args.output, args.original, parse_storage_options(args.storage_options), args.grid,
                        record_url=args.record, effect=effect)
    # one line per field: the engine config is one line of its own, not thirty
    print("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in summary.items()) + "\n}")
    print(text_summary(summary), file=sys.stderr)
    if summary["not_mempipe_output"] or not summary["samples"]:
        print(f"mempipe: warning: {summary['not_mempipe_output']} sample(s) under {args.output} carry no mempipe "
              "record: these shards were not written by mempipe protect", file=sys.stderr)
        return 1
    return 0
