"""Protection through a faulty object store: nothing lost, nothing duplicated, and what it costs.

A loopback S3 endpoint (moto's server) sits behind the fault-injecting proxy of the test suite
(connection resets, 503 SlowDown, stalls past the read timeout, bodies cut midway, on a seeded
share of requests). The same input is protected at each fault rate, in one process, and every
output is audited key by key against the input:

    python bench/faults.py                      # 40 shards x 8 samples, rates 0, 5 %, 20 %
    python bench/faults.py --shards 20 --rates 0 0.2

Writes bench/results/faults.json (rewritten after each rate, so a stopped run keeps its rows).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import sys
import tarfile
import tempfile
import time
from collections import Counter

import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the fault proxy lives with the tests that use it

from fault_proxy import FaultProxy  # noqa: E402

from mempipe.cli import main as mempipe  # noqa: E402
from mempipe.data.demo_data import write_split  # noqa: E402
from mempipe.io.retry import retry_counts  # noqa: E402
from mempipe.io.shards import iter_shard  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def audit(fs, prefix: str, input_keys: list[str]) -> dict:
    """Every input key must be protected exactly once or recorded as failed."""
    protected, failed = Counter(), Counter()
    for path in (p for p in fs.ls(prefix, refresh=True) if p.endswith(".tar")):
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(path))) as tar:
            for key in {m.name.rsplit(".", 1)[0] for m in tar.getmembers()}:
                protected[key] += 1
    for path in (p for p in fs.ls(prefix) if p.endswith(".parquet")):
        for row in pq.read_table(io.BytesIO(fs.cat_file(path))).to_pylist():
            if row["status"] != "success":
                failed[row["key"]] += 1
    seen = protected + failed
    return {"keys_in": len(input_keys), "keys_protected": len(protected), "keys_failed": len(failed),
            "lost": sum(1 for k in input_keys if k not in seen),
            "duplicated": sum(1 for k, n in seen.items() if n > 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--per-shard", type=int, default=8)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.05, 0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench/results/faults.json"))
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer
    import boto3
    import s3fs

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    upstream = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      MEMPIPE_IO_MAX_WAIT="1")
    boto3.client("s3", endpoint_url=upstream).create_bucket(Bucket="faults")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": upstream})
    with tempfile.TemporaryDirectory() as tmp:
        write_split(tmp, args.shards * args.per_shard, 32, seed=args.seed, first_index=0, per_shard=args.per_shard)
        for name in sorted(os.listdir(tmp)):
            fs.put_file(os.path.join(tmp, name), f"faults/in/{name}")
        input_keys = [s.key for name in sorted(os.listdir(tmp)) if name.endswith(".tar")
                      for s in iter_shard(os.path.join(tmp, name))]
    rows, baseline = [], None
    for rate in args.rates:
        out = f"faults/out-{rate:g}"
        with FaultProxy(upstream, rate=rate, seed=args.seed + 1, stall_seconds=1.5) as proxy:
            options = json.dumps({"client_kwargs": {"endpoint_url": proxy.url},
                                  "config_kwargs": {"read_timeout": 1, "connect_timeout": 1}})
            before = Counter(retry_counts)
            started = time.perf_counter()
            code = mempipe(["protect", "s3://faults/in", f"s3://{out}", "--no-ray", "--method", "random", "--quiet",
                            "--storage-options", options])
            seconds = time.perf_counter() - started
            retries = Counter(retry_counts) - before
        baseline = baseline or seconds
        record = json.loads(fs.cat_file(f"{out}/mempipe_run.json"))
        row = {"fault_rate": rate, "exit_code": code, "shards": args.shards, **audit(fs, out, input_keys),
               "shards_failed": len(record["shards_failed"]), "requests": proxy.counts["requests"],
               "faults_injected": proxy.faults_injected(),
               "faults_by_kind": {k.split(":", 1)[1]: v for k, v in sorted(proxy.counts.items()) if ":" in k},
               "retries_botocore_requests": retries.get("s3 request (botocore)", 0),
               "retries_whole_file": sum(v for k, v in retries.items() if k != "s3 request (botocore)"),
               "seconds": round(seconds, 2), "time_vs_fault_free": round(seconds / baseline, 2)}
        rows.append(row)
        print(json.dumps(row))
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"what": "protect --method random through a fault-injecting proxy in front of moto's S3 "
                               "server; faults on a seeded share of requests; every key audited",
                       "read_timeout_s": 1, "stall_s": 1.5, "per_shard": args.per_shard, "rows": rows}, f, indent=1)
    server.stop()


if __name__ == "__main__":
    main()
