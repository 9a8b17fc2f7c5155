"""What protected shards publish, and the owner's private record kept apart from them.

A thief who reads the published shards must learn nothing that undoes the protection: the
trigger text and its position (strip it exactly), the cluster ids (group samples for a
targeted clean-up), per-sample measures. So by default (``--provenance public``) each
``{key}.json`` carries only ``version``, ``method``, ``epsilon`` and ``run_id``, and the
``mempipe_run.json`` at the output root only counts and timing. Everything else goes to the
private record (``--record URL``, default ``OUTPUT_mempipe_record`` beside the output):

    RECORD/run.json               the full run record (config, trigger table, centroids, unit logs)
    RECORD/samples/NNNNN.parquet  per sample: key and its full mempipe object
    RECORD/fit.json               the fit phase: settings and their hash, centroids, triggers, sample keys
    RECORD/surrogate.pt           the run's shared surrogate (open_clip checkpoint), when it is used
    RECORD/features.pt            the feature model the clusters were fitted with (cluster partition)

Resume, incremental runs and ``mempipe inspect`` read it from there. ``--provenance full``
also writes everything into the shards and the output root, as research runs want.
"""
from __future__ import annotations

import io
import json
import secrets
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .shards import ShardOutput
from .storage import filesystem, join, read_bytes, write_bytes_atomic

PROVENANCE = ("public", "full")
PUBLIC_SAMPLE_KEYS = ("version", "method", "epsilon", "run_id")
PUBLIC_RUN_KEYS = ("mempipe_version", "run_id", "engine", "partition", "shards_total", "shards_done_before",
                   "shards_written", "shards_failed", "samples_protected", "samples_failed", "retries", "seconds")
RUN_RECORD = "mempipe_run.json"     # at the output root
PRIVATE_RUN = "run.json"            # in the private record
RECORD_SUFFIX = "_mempipe_record"


def default_record_url(output_url: str) -> str:
    return output_url.rstrip("/") + RECORD_SUFFIX


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def publish(outputs: list[ShardOutput], provenance: str, run_id: str) -> tuple[list[ShardOutput], list[dict]]:
    """(the samples as the shard publishes them, the private per-sample rows)."""
    published, private = [], []
    for out in outputs:
        full = out.meta.get("mempipe")
        if out.image is None or not isinstance(full, dict):
            published.append(out)
            continue
        full = {**full, "run_id": run_id}
        private.append({"key": out.key, "mempipe": json.dumps(full, sort_keys=True)})
        shown = full if provenance == "full" else {k: full[k] for k in PUBLIC_SAMPLE_KEYS if k in full}
        published.append(ShardOutput(out.key, out.image, out.image_ext, out.caption, {**out.meta, "mempipe": shown},
                                     out.error))
    return published, private


def write_private_samples(record_url: str, shard: str, rows: list[dict], storage_options: dict | None) -> None:
    """Written before the shard's stats file, so a shard that counts as done has its record."""
    sink = pa.BufferOutputStream()
    table = pa.Table.from_pylist(rows, schema=pa.schema([("key", pa.string()), ("mempipe", pa.string())]))
    pq.write_table(table, sink)
    fs, prefix = filesystem(record_url, storage_options)
    write_bytes_atomic(fs, join(prefix, f"samples/{shard}.parquet"), sink.getvalue().to_pybytes())


def read_private_samples(record_url: str, storage_options: dict | None = None) -> dict[tuple[str, str], dict]:
    """(shard, key) -> the sample's full mempipe object, from the private record."""
    fs, prefix = filesystem(record_url, storage_options)
    folder = join(prefix, "samples")
    found: dict[tuple[str, str], dict] = {}
    if not fs.exists(folder):
        return found
    for path in sorted(p for p in fs.find(folder) if p.endswith(".parquet")):
        shard = path.rsplit("/", 1)[-1][: -len(".parquet")]
        for row in pq.read_table(io.BytesIO(read_bytes(fs, path))).to_pylist():
            found[(shard, row["key"])] = json.loads(row["mempipe"])
    return found


def write_run_record(output_url: str, record_url: str, record: dict[str, Any], provenance: str,
                     storage_options: dict | None) -> None:
    rfs, rprefix = filesystem(record_url, storage_options)
    write_bytes_atomic(rfs, join(rprefix, PRIVATE_RUN), json.dumps(record, indent=1, default=str).encode())
    public = record if provenance == "full" else {k: record[k] for k in PUBLIC_RUN_KEYS if k in record}
    public = {**public, "method": record["config"]["method"], "epsilon": record["config"]["epsilon"],
              "provenance": provenance}
    fs, prefix = filesystem(output_url, storage_options)
    write_bytes_atomic(fs, join(prefix, RUN_RECORD), json.dumps(public, indent=1, default=str).encode())


def read_run_record(output_url: str, record_url: str | None, storage_options: dict | None) -> dict | None:
    """The private run record; else a full record at the output root (``--provenance full`` runs)."""
    for url, name in ((record_url, PRIVATE_RUN), (output_url, RUN_RECORD)):
        if not url:
            continue
        fs, prefix = filesystem(url, storage_options)
        path = join(prefix, name)
        try:
            record = json.loads(read_bytes(fs, path))
        except FileNotFoundError:
            continue
        if "config" in record:
            return record
    return None
