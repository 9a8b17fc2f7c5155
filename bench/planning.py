"""Time to find the done shards of an output with N shard objects on a loopback S3 endpoint.

Before: one request per input shard (does ``NNNNN_stats.json`` exist?). After: one listing of
the output prefix (``mempipe.io.shards.done_shards``; S3 pages it by 1,000 keys). moto's server on
loopback, spoken to by s3fs over HTTP.

    python bench/planning.py --shards 10000

Writes bench/results/planning.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from mempipe.io.shards import done_shards, shard_done  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=10000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "planning.json"))
    args = parser.parse_args()
    import contextlib

    import boto3
    import s3fs

    from mempipe_research.testing import moto_s3

    server = contextlib.ExitStack()
    endpoint = server.enter_context(moto_s3("bench", "bench"))["AWS_ENDPOINT_URL"]
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="plan")
    names = [f"{i:05d}" for i in range(args.shards)]
    with ThreadPoolExecutor(16) as pool:  # every other shard is done: a stats file beside its tar
        list(pool.map(lambda n: client.put_object(Bucket="plan", Key=f"out/{n}_stats.json", Body=b"{}"),
                      names[::2]))
    s3fs.S3FileSystem.clear_instance_cache()
    url = "s3://plan/out"
    started = time.perf_counter()
    after = done_shards(url)
    listing_s = time.perf_counter() - started
    started = time.perf_counter()
    before = {n for n in names if shard_done(url, n)}
    per_shard_s = time.perf_counter() - started
    assert before == after and len(after) == len(names[::2])
    result = {"shards": args.shards, "done": len(after), "endpoint": "moto server on loopback, s3fs over HTTP",
              "one_request_per_shard_s": round(per_shard_s, 2), "one_listing_s": round(listing_s, 3),
              "speedup": round(per_shard_s / listing_s, 1),
              "per_shard_request_ms": round(1000 * per_shard_s / args.shards, 2)}
    write_result(Path(args.out), result)
    print(json.dumps(result))
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
