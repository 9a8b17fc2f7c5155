"""Peak memory of the Ray pipeline (driver and every process it starts) at two dataset sizes.

Runs `mempipe protect` (shard partition, 2 CPU actors) on 1,000 and 10,000 demo samples with
a minimal engine config (the engine's own memory follows the unit size, not the dataset; this
measures the pipeline around it), sampling the RSS of the driver's whole process tree.
Writes bench/results/memory.json with the ratio of the peaks.

    python bench/memory.py [--sizes 1000,10000]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mempipe.demo_data import write_demo_data  # noqa: E402

MINIMAL = "outer_iters: 1\ntrain_steps: 2\npgd_steps: 1\nhotflip_iters: 1\ncandidates: 2\n"


def tree_rss(root: psutil.Process) -> tuple[int, int, int]:
    """(driver RSS, whole tree RSS, number of processes)."""
    procs = [root] + root.children(recursive=True)
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass  # the process ended between listing and reading it
    return root.memory_info().rss, total, len(procs)


def measure(n: int, work: Path) -> dict:
    data = work / f"data{n}"
    write_demo_data(str(data), n, 10, size=64, seed=0)
    cfg = work / "minimal.yaml"
    cfg.write_text(MINIMAL)
    cmd = [sys.executable, "-m", "mempipe.cli", "protect", str(data / "train"), str(work / f"out{n}"),
           "--config", str(cfg), "--partition", "shard", "--num-actors", "2", "--quiet"]
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root = psutil.Process(proc.pid)
    peak_driver = peak_total = peak_procs = 0
    while proc.poll() is None:
        try:
            driver, total, count = tree_rss(root)
        except psutil.Error:
            break
        peak_driver, peak_total, peak_procs = max(peak_driver, driver), max(peak_total, total), max(peak_procs, count)
        time.sleep(0.25)
    out = proc.stdout.read().strip().splitlines()
    if proc.returncode != 0:
        raise SystemExit(f"protect failed for {n} samples")
    summary = json.loads(out[-1])
    return {"samples": n, "protected": summary["samples_protected"], "seconds": round(time.time() - started, 1),
            "peak_driver_rss_mib": round(peak_driver / 2**20, 1), "peak_tree_rss_mib": round(peak_total / 2**20, 1),
            "processes_at_peak": peak_procs}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(n, Path(tmp)) for n in sizes]
    small, large = runs[0], runs[-1]
    result = {"host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"), "engine_config": MINIMAL,
              "runs": runs, "ratio_tree": round(large["peak_tree_rss_mib"] / small["peak_tree_rss_mib"], 3),
              "ratio_driver": round(large["peak_driver_rss_mib"] / small["peak_driver_rss_mib"], 3)}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
