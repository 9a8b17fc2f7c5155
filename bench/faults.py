"""Protection through a flaky link to the object store: nothing lost, nothing duplicated, and what it costs.

A loopback S3 endpoint (moto's server) sits behind the fault-injecting proxy of the test suite. On a
seeded share of connections it answers as a bad day does (reset before answering, 503 SlowDown, a
stall past the read timeout, a body cut midway); independently it resets a connection in the middle
of a body, up or down, with a chance per 64 KB carried, so the longer a transfer the surer a reset.

What runs is what a real run writes: the default method (a surrogate trained in the fit and stored in
the private record, MEM on every shard) on shards of a realistic size (at least 50 MB each, made from
generated photo-style images with film grain, stored as PNG at 512 px), S3 to S3, Ray with 2 actors.
A run that ends with shards failed is run again (at most ``--runs`` times), as a user would. Every
output is audited key by key against the input:

    python bench/faults.py                                  # the rows of the README's table
    python bench/faults.py --rows 0.08:0.02 --runs 2        # one row: connection faults : per-64 KB resets

Writes bench/results/faults.json (rewritten after each row, so a stopped run keeps its rows).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from mempipe.data.demo_data import sample_for  # noqa: E402
from mempipe.io.images import encode  # noqa: E402
from mempipe.io.shards import ShardOutput, iter_shard, write_shard  # noqa: E402
from mempipe.io.storage import part_bytes, read_part_bytes  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402
from mempipe_research.testing import FAST_ENGINE, FaultProxy, fast_config, moto_s3  # noqa: E402

DEFAULT_ROWS = ["0:0", "0.05:0.01", "0.08:0.02", "0.2:0.02"]


def write_large_shards(folder: str, shards: int, per_shard: int, size: int, seed: int) -> list[str]:
    """Generated photo-style pairs with film grain (so PNG cannot shrink them): ~0.7 MB a sample."""
    rng = np.random.default_rng(seed)
    keys = []
    for shard in range(shards):
        samples = []
        for i in range(per_shard):
            small, caption, _ = sample_for("photo", shard * per_shard + i, 128, seed)
            pixels = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))   # a camera's size
            grain = rng.normal(0, 6, pixels.shape)
            pixels = np.clip(pixels.astype(np.float64) + grain, 0, 255).astype(np.uint8)
            key = f"{shard:05d}{i:04d}"
            data = encode(pixels, "png")
            samples.append(ShardOutput(key=key, image=data, image_ext="png", caption=caption,
                                       meta={"key": key, "caption": caption, "status": "success", "width": size,
                                             "height": size}))
            keys.append(key)
        write_shard(folder, f"{shard:05d}", samples, record_timing=False)
    return keys


def audit(fs, prefix: str, input_keys: list[str], failed_shards: list[str]) -> dict:
    """Every input key must be protected exactly once, recorded as failed, or in a shard the run
    record names as failed (a shard that could not be read or written at all)."""
    protected, failed = Counter(), Counter()
    for path in (p for p in fs.ls(prefix, refresh=True) if p.endswith(".tar")):
        for sample in iter_shard(f"s3://{path}"):   # the package's shard reader (endpoint: AWS_ENDPOINT_URL)
            protected[sample.key] += 1
    for path in (p for p in fs.ls(prefix) if p.endswith(".parquet")):
        for row in pq.read_table(io.BytesIO(fs.cat_file(path))).to_pylist():
            if row["status"] != "success":
                failed[row["key"]] += 1
    seen = protected + failed
    in_failed_shard = [k for k in input_keys if k not in seen and k[:5] in failed_shards]
    return {"keys_in": len(input_keys), "keys_protected": len(protected), "keys_failed": len(failed),
            "keys_in_failed_shards": len(in_failed_shard),
            "lost": sum(1 for k in input_keys if k not in seen and k[:5] not in failed_shards),
            "duplicated": sum(1 for k, n in seen.items() if n > 1)}


def object_bytes(fs, prefix: str) -> int:
    return sum(fs.info(p)["size"] for p in fs.find(prefix))


def run_protect(out: str, proxy_url: str, config: str, env: dict) -> tuple[int, dict | None, str, float]:
    options = json.dumps({"client_kwargs": {"endpoint_url": proxy_url},
                          "config_kwargs": {"read_timeout": 5, "connect_timeout": 2}})
    command = [sys.executable, "-m", "mempipe.cli", "protect", "s3://faults/in", f"s3://{out}", "--config", config,
               "--num-actors", "2", "--quiet", "--storage-options", options]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    return done.returncode, summary, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--size", type=int, default=512, help="stored image size (px)")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS,
                        help="CONNECTION_FAULT_RATE:RESET_PER_64KB pairs")
    parser.add_argument("--runs", type=int, default=2, help="runs at most per row (a rerun resumes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench/results/faults.json"))
    args = parser.parse_args()

    import contextlib

    import boto3
    import s3fs

    server = contextlib.ExitStack()
    upstream = server.enter_context(moto_s3("bench", "bench"))["AWS_ENDPOINT_URL"]
    boto3.client("s3", endpoint_url=upstream).create_bucket(Bucket="faults")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": upstream})
    work = tempfile.mkdtemp(prefix="mempipe-faults-")
    started = time.perf_counter()
    input_keys = write_large_shards(os.path.join(work, "in"), args.shards, args.per_shard, args.size, args.seed)
    shard_mb = []
    for name in sorted(os.listdir(os.path.join(work, "in"))):
        fs.put_file(os.path.join(work, "in", name), f"faults/in/{name}")
        if name.endswith(".tar"):
            shard_mb.append(round(os.path.getsize(os.path.join(work, "in", name)) / 2**20, 1))
    print(f"input: {args.shards} shards of {shard_mb} MB ({time.perf_counter() - started:.0f}s)", flush=True)
    # the default method at a bench's size: the fit trains its surrogate for real, units are cheap
    config = fast_config(work)
    env = {**os.environ, "MEMPIPE_IO_MAX_WAIT": "2", "MEMPIPE_CACHE": os.path.join(work, "cache"),
           "RAY_DEDUP_LOGS": "0"}
    rows, baseline = [], None
    for spec in args.rows:
        rate, midstream = (float(x) for x in spec.split(":"))
        out = f"faults/out-{rate:g}-{midstream:g}"
        with FaultProxy(upstream, rate=rate, seed=args.seed + 1, stall_seconds=6, midstream_rate=midstream) as proxy:
            runs = []
            for attempt in range(args.runs):
                code, summary, last_error, seconds = run_protect(out, proxy.url, config, env)
                runs.append({"exit_code": code, "seconds": round(seconds, 1), "summary": summary,
                             "stderr_last_line": last_error})
                print(f"rate {rate} midstream {midstream} run {attempt + 1}: exit {code} {seconds:.0f}s "
                      f"{summary or last_error}", flush=True)
                if code == 0 and summary and summary.get("shards_failed", 1) == 0:
                    break
        fs.invalidate_cache()
        record = json.loads(fs.cat_file(f"{out}_mempipe_record/run.json")) if fs.exists(
            f"{out}_mempipe_record/run.json") else {}
        seconds = sum(r["seconds"] for r in runs)
        baseline = baseline or seconds
        stored = object_bytes(fs, out) + object_bytes(fs, f"{out}_mempipe_record")
        row = {"connection_fault_rate": rate, "reset_per_64KB": midstream, "runs": len(runs),
               "completed": runs[-1]["exit_code"] == 0 and bool(runs[-1]["summary"])
               and runs[-1]["summary"].get("shards_failed") == 0,
               **audit(fs, out, input_keys, [f["shard"] for f in record.get("shards_failed", [])]),
               "requests": proxy.counts["requests"], "faults_injected": proxy.faults_injected(),
               "faults_by_kind": {k.split(":", 1)[1]: v for k, v in sorted(proxy.counts.items()) if ":" in k},
               "retries_last_run": record.get("retries", {}),
               "bytes_up_MB": round(proxy.counts["bytes_up"] / 2**20, 1),
               "bytes_down_MB": round(proxy.counts["bytes_down"] / 2**20, 1),
               "bytes_stored_MB": round(stored / 2**20, 1),
               "bytes_resent_up_MB": round(max(0, proxy.counts["bytes_up"] - stored) / 2**20, 1),
               "surrogate_file_MB": round(fs.info(f"{out}_mempipe_record/surrogate.pt")["size"] / 2**20, 2)
               if fs.exists(f"{out}_mempipe_record/surrogate.pt") else None,
               "seconds": round(seconds, 1), "time_vs_fault_free": round(seconds / baseline, 2), "run_log": runs}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "run_log"}), flush=True)
        write_result(args.out, {
            "what": "mempipe protect (default method: cpu-tiny MEM with a trained surrogate, fast engine settings), S3 "
                    "to S3 through a fault-injecting proxy in front of moto's S3 server, Ray with 2 actors; every key "
                    "audited",
            "shards": args.shards, "per_shard": args.per_shard, "image_px": args.size, "shard_MiB": shard_mb,
            "part_MiB": part_bytes() // 2**20, "read_range_MiB": read_part_bytes() / 2**20, "engine": FAST_ENGINE,
            "rows": rows})
    server.close()


if __name__ == "__main__":
    main()
