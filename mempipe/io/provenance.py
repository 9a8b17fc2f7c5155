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

import dataclasses
import io
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .shards import ShardOutput
from .storage import filesystem, join, read_bytes, write_bytes_atomic

PROVENANCE = ("public", "full")
RUN_RECORD = "mempipe_run.json"     # at the output root
PRIVATE_RUN = "run.json"            # in the private record
RECORD_SUFFIX = "_mempipe_record"


PUBLIC = {"public": True}   # field metadata: shown in the published shards under --provenance public


def public_field(**kwargs):
    return field(metadata=PUBLIC, **kwargs)


def as_dict(record, public_only: bool = False) -> dict[str, Any]:
    """A record dataclass as JSON-ready data: every field, or only those marked public."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
            if not public_only or f.metadata.get("public")}


@dataclass
class SampleProvenance:
    """What mempipe did to one sample: the ``mempipe`` object of its json. Published in full only
    under ``--provenance full``; otherwise the public fields, the rest in the private record."""

    version: str = public_field()
    method: str = public_field()
    epsilon: int = public_field()
    noise_scope: str = ""
    unit: str = ""
    max_delta: int = 0
    psnr: float = 0.0
    image_format: str = ""
    source_mode: str = ""
    cluster: int | None = None
    trigger_scope: str | None = None
    trigger: str | None = None
    trigger_word_index: int | None = None
    warnings: list[str] | None = None
    run_id: str | None = public_field(default=None)   # set when the shard is published


def default_record_url(output_url: str) -> str:
    return output_url.rstrip("/") + RECORD_SUFFIX


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def publish(outputs: list[ShardOutput], provenance: str, run_id: str) -> tuple[list[ShardOutput], list[dict]]:
    """(the samples as the shard publishes them, the private per-sample rows)."""
    published, private = [], []
    for out in outputs:
        if out.image is None or out.provenance is None:
            published.append(out)
            continue
        record = dataclasses.replace(out.provenance, run_id=run_id)
        private.append({"key": out.key, "mempipe": json.dumps(as_dict(record), sort_keys=True)})
        shown = as_dict(record, public_only=provenance != "full")
        published.append(dataclasses.replace(out, meta={**out.meta, "mempipe": shown}, provenance=None))
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


def write_run_record(output_url: str, record_url: str, record, storage_options: dict | None) -> None:
    """``record``: a run record dataclass whose public fields go to the output root (all of them
    under ``--provenance full``), with the method and epsilon; the whole record to the private one."""
    rfs, rprefix = filesystem(record_url, storage_options)
    write_bytes_atomic(rfs, join(rprefix, PRIVATE_RUN), json.dumps(as_dict(record), indent=1, default=str).encode())
    public = {**as_dict(record, public_only=record.provenance != "full"), "method": record.config["method"],
              "epsilon": record.config["epsilon"], "provenance": record.provenance}
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
