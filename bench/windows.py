"""What protecting in windows of W shards changes against clustering the whole dataset at once.

The centroids are fitted once on a sample, so every sample gets the cluster it would get in a
global clustering; what a window changes is which samples share a *unit*: a unit holds the
samples of one window, so a cluster's samples are split into one fragment per window it
appears in (and a fragment larger than ``unit_size`` into chunks). Cluster triggers are fitted
and shared by every fragment; per-cluster *noise* (UC-style) is optimised per unit, so its
pattern is shared within a fragment only. This measures the fragment sizes for several W on
demo data, beside W = all shards (today's global packing):

    python bench/windows.py --samples 8000 --per-shard 500 --windows 1,2,4,8,16

Writes bench/results/windows.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from mempipe.data.demo_data import write_split  # noqa: E402
from mempipe.engine.config import preset  # noqa: E402
from mempipe.run.fit import FitRequest, FitState, fit  # noqa: E402
from mempipe.run.samples import read_shard  # noqa: E402
from mempipe.io.shards import DEFAULT_LIMITS, list_shards  # noqa: E402
from mempipe.run.windows import assign_clusters, pack_units  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402


def fragments(cluster_of_shard: list[list[int]], window: int, unit_size: int) -> dict:
    sizes, units, clusters_per_unit = [], 0, []
    for start in range(0, len(cluster_of_shard), window):
        ids = [c for shard in cluster_of_shard[start:start + window] for c in shard]
        counts = np.bincount(ids)
        sizes += [int(n) for n in counts if n]
        packed = pack_units(ids, unit_size)
        units += len(packed)
        clusters_per_unit += [len({ids[i] for i in u}) for u in packed]
    return {"window_shards": window, "fragments": len(sizes), "mean_fragment": round(float(np.mean(sizes)), 1),
            "median_fragment": float(np.median(sizes)), "min_fragment": int(min(sizes)), "units": units,
            "mean_clusters_per_unit": round(float(np.mean(clusters_per_unit)), 2)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8000)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--windows", default="1,2,4,8,16")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "windows.json"))
    args = parser.parse_args()
    cfg = preset("cpu-tiny")
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        write_split(tmp, args.samples, 64, seed=0, first_index=0, per_shard=args.per_shard)
        urls = list_shards(tmp)
        state: FitState = fit(FitRequest(urls, cfg.with_overrides(method="random"), {}, "", "", None, DEFAULT_LIMITS, True),
                              "cpu")
        per_shard = []
        for url in urls:
            items = read_shard(url, None, DEFAULT_LIMITS, cfg.image_size).decoded
            per_shard.append(assign_clusters(items, state, cfg, "cpu"))
    windows = [int(w) for w in args.windows.split(",")]
    rows = [fragments(per_shard, w, cfg.unit_size) for w in windows if w < len(urls)]
    rows.append({**fragments(per_shard, len(urls), cfg.unit_size), "window_shards": f"all ({len(urls)})"})
    result = {"samples": args.samples, "shards": len(urls), "per_shard": args.per_shard, "clusters": cfg.clusters,
              "unit_size": cfg.unit_size, "seconds": round(time.time() - started, 1), "rows": rows}
    write_result(Path(args.out), result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
