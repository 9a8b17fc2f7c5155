"""Peak memory of the Ray pipeline (the driver, each worker, Ray's object store) at several sizes.

Runs `mempipe protect` (2 CPU actors) on demo samples with a minimal engine config (the engine's
own memory follows the unit size, not the dataset; this measures the pipeline around it),
sampling every 0.25 s: the driver's RSS, the largest RSS of any one process it started (a
worker), the whole tree's RSS, and the bytes in use in /dev/shm (where Ray's object store lives
on Linux), less what was in use before the run. Also when the first protected shard appeared
(streaming: long before the end). Writes bench/results/memory[_PARTITION].json with the ratios
of the largest size's peaks to the smallest's.

    python bench/memory.py --partition cluster --sizes 2000,8000,32000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

from mempipe.data.demo_data import write_demo_data  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402

MINIMAL = "outer_iters: 1\ntrain_steps: 2\npgd_steps: 1\nhotflip_iters: 1\ncandidates: 2\n"


def tree_rss(root: psutil.Process) -> tuple[int, int, int, int]:
    """(driver RSS, largest other process's RSS, whole tree RSS, number of processes)."""
    children = root.children(recursive=True)
    sizes = []
    for p in children:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            pass  # the process ended between listing and reading it
    driver = root.memory_info().rss
    return driver, max(sizes, default=0), driver + sum(sizes), 1 + len(children)


def shm_used() -> int:
    return shutil.disk_usage("/dev/shm").used if os.path.isdir("/dev/shm") else 0


def measure(n: int, work: Path, partition: str, window: int | None) -> dict:
    data = work / f"data{n}"
    write_demo_data(str(data), n, 10, size=32, seed=0)
    cfg = work / "minimal.yaml"
    cfg.write_text(MINIMAL)
    out = work / f"out{n}"
    cmd = [sys.executable, "-m", "mempipe.cli", "protect", str(data / "train"), str(out),
           "--config", str(cfg), "--partition", partition, "--num-actors", "2", "--quiet"]
    if window:
        cmd += ["--window", str(window)]
    shm_before = shm_used()
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root = psutil.Process(proc.pid)
    peak = {"driver": 0, "worker": 0, "tree": 0, "shm": 0, "procs": 0}
    first_shard = None
    while proc.poll() is None:
        try:
            driver, worker, total, count = tree_rss(root)
        except psutil.Error:
            break
        for k, v in (("driver", driver), ("worker", worker), ("tree", total), ("procs", count),
                     ("shm", shm_used() - shm_before)):
            peak[k] = max(peak[k], v)
        if first_shard is None and any(out.glob("*_stats.json")):
            first_shard = time.time() - started
        time.sleep(0.25)
    lines = proc.stdout.read().strip().splitlines()
    if proc.returncode != 0:
        raise SystemExit(f"protect failed for {n} samples")
    summary = json.loads(lines[-1])
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    return {"samples": n, "protected": summary["samples_protected"], "shards": len(list(out.glob("*_stats.json"))),
            "seconds": round(time.time() - started, 1),
            "first_shard_written_after_s": None if first_shard is None else round(first_shard, 1),
            "peak_driver_rss_mib": mib(peak["driver"]), "peak_worker_rss_mib": mib(peak["worker"]),
            "peak_tree_rss_mib": mib(peak["tree"]), "peak_object_store_shm_mib": mib(max(0, peak["shm"])),
            "processes_at_peak": peak["procs"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="2000,8000,32000")
    parser.add_argument("--partition", choices=("shard", "cluster"), default="cluster")
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or ROOT / "bench" / "results" / f"memory_{args.partition}.json")
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            runs.append(measure(n, Path(tmp), args.partition, args.window))
            small, large = runs[0], runs[-1]
            ratio = lambda k: round(large[k] / small[k], 3) if small[k] else None  # noqa: E731
            result = {"date": time.strftime("%Y-%m-%d %H:%M"), "partition": args.partition, "window": args.window,
                      "engine_config": MINIMAL, "image_px": 32, "actors": 2, "runs": runs,
                      "ratio_driver": ratio("peak_driver_rss_mib"), "ratio_worker": ratio("peak_worker_rss_mib"),
                      "ratio_tree": ratio("peak_tree_rss_mib"),
                      "ratio_object_store": ratio("peak_object_store_shm_mib")}
            write_result(out, result)   # after each size: a stopped run keeps its rows
            print(json.dumps(runs[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
