"""Webdataset shards in the img2dataset layout: list, stream, write.

Reading streams a tar member by member (``tarfile`` in stream mode over an fsspec file),
so nothing is extracted to disk and a truncated or hostile shard costs only the samples
it really breaks. Writing produces ``NNNNN.tar``, ``NNNNN.parquet`` and, last,
``NNNNN_stats.json``: a shard with a stats file is complete.
"""
from __future__ import annotations

import io
import json
import re
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import braceexpand
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .images import IMAGE_EXTENSIONS
from .storage import filesystem, join, write_bytes_atomic

_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's key/extension split
FIXED_MTIME = 0  # identical bytes on every rerun


@dataclass
class RawSample:
    """One sample as read from a shard. ``error`` set means it cannot be processed."""

    key: str
    shard: str
    image: bytes | None = None
    image_ext: str | None = None
    caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class ShardOutput:
    """A processed sample ready to write (``image`` is None for a failed sample)."""

    key: str
    image: bytes | None
    image_ext: str | None
    caption: str | None
    meta: dict[str, Any]
    error: str | None = None


def shard_name(url: str) -> str:
    base = url.rstrip("/").rsplit("/", 1)[-1]
    return base[: -len(".tar")] if base.endswith(".tar") else base


def list_shards(url: str, storage_options: dict | None = None) -> list[str]:
    """Shard URLs under a folder/prefix, a single ``.tar`` URL, or a brace pattern; sorted."""
    if "{" in url:
        urls = list(braceexpand.braceexpand(url))
        fs, _ = filesystem(urls[0], storage_options)
        missing = [u for u in urls if not fs.exists(filesystem(u, storage_options)[1])]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) of the pattern do not exist, e.g. {missing[0]}")
        return urls
    fs, path = filesystem(url, storage_options)
    if path.endswith(".tar"):
        if not fs.exists(path):
            raise FileNotFoundError(f"no such shard: {url}")
        return [url]
    if not fs.exists(path):
        raise FileNotFoundError(f"input not found: {url}")
    scheme = url.split("://", 1)[0] + "://" if "://" in url else ""
    found = sorted(p for p in fs.find(path, maxdepth=1) if p.endswith(".tar"))
    return [scheme + p if scheme and not p.startswith(scheme) else p for p in found]


def _safe_member(name: str) -> bool:
    return not (name.startswith("/") or ".." in name.split("/") or "\\" in name or "\x00" in name)


def _finish(sample: RawSample, members: dict[str, bytes]) -> RawSample:
    """Fill a sample from its grouped members and validate it."""
    if sample.error:
        return sample
    image_exts = [e for e in members if e.lower() in IMAGE_EXTENSIONS]
    if not image_exts:
        sample.error = f"missing image (members: {sorted(members) or 'none'})"
        return sample
    if len(image_exts) > 1:
        sample.warnings.append(f"several images {image_exts}; using {image_exts[0]}")
    sample.image_ext = image_exts[0].lower()
    sample.image = members[image_exts[0]]
    if "json" in members:
        try:
            meta = json.loads(members["json"].decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
            sample.meta = meta
        except (ValueError, UnicodeDecodeError) as exc:
            sample.warnings.append(f"metadata json ignored: {exc}")
    if "txt" not in members:
        sample.error = "missing caption (.txt)"
        return sample
    try:
        caption = members["txt"].decode("utf-8")
    except UnicodeDecodeError as exc:
        sample.error = f"caption is not valid UTF-8: {exc.reason} at byte {exc.start}"
        return sample
    caption = " ".join(caption.split())
    if not caption:
        sample.error = "empty caption"
        return sample
    sample.caption = caption
    return sample


def iter_shard(url: str, storage_options: dict | None = None) -> Iterator[RawSample]:
    """Stream the samples of one shard. Broken parts become samples with ``error`` set."""
    name = shard_name(url)
    fs, path = filesystem(url, storage_options)
    seen: set[str] = set()
    current: RawSample | None = None
    members: dict[str, bytes] = {}

    def flush() -> Iterator[RawSample]:
        if current is not None:
            yield _finish(current, members)

    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                if not _safe_member(info.name):
                    yield RawSample(key=info.name, shard=name, error=f"unsafe member name {info.name!r} (absolute or '..'); skipped")
                    continue
                match = _MEMBER.match(info.name)
                if not match:
                    yield RawSample(key=info.name, shard=name, error=f"member name {info.name!r} has no extension; skipped")
                    continue
                key, ext = match.group(1), match.group(2).lower()
                data = tar.extractfile(info).read()
                if current is None or key != current.key:
                    yield from flush()
                    current, members = RawSample(key=key, shard=name), {}
                    if key in seen:
                        current.error = "duplicate key: it appeared earlier in the shard"
                    seen.add(key)
                if ext in members and not current.error:
                    current.error = f"duplicate member {key}.{ext}"
                members[ext] = data
            yield from flush()
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = f"truncated or corrupt tar: {type(exc).__name__}: {exc}"
        if current is not None:
            current.error = current.error or reason
            yield from flush()
        else:
            yield RawSample(key=f"{name}/<unreadable>", shard=name, error=reason)


def _tar_bytes(samples: list[ShardOutput]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for s in samples:
            if s.image is None:
                continue
            meta = json.dumps(s.meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
            for ext, data in ((s.image_ext, s.image), ("txt", s.caption.encode("utf-8")), ("json", meta)):
                info = tarfile.TarInfo(f"{s.key}.{ext}")
                info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


PARQUET_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("metadata", pa.string()),
    ]
)


def _parquet_bytes(samples: list[ShardOutput]) -> bytes:
    def as_int(v):
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    rows = [
        {
            "key": s.key,
            "status": "failed" if s.error else "success",
            "error_message": s.error,
            "url": s.meta.get("url") if isinstance(s.meta.get("url"), str) else None,
            "caption": s.caption,
            "width": as_int(s.meta.get("width")),
            "height": as_int(s.meta.get("height")),
            "metadata": json.dumps(s.meta, sort_keys=True, ensure_ascii=False),
        }
        for s in samples
    ]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), sink)
    return sink.getvalue().to_pybytes()


def stats_path(out_prefix: str, name: str) -> str:
    return join(out_prefix, f"{name}_stats.json")


def write_shard(
    out_url: str,
    name: str,
    samples: list[ShardOutput],
    extra_stats: dict[str, Any] | None = None,
    storage_options: dict | None = None,
    record_timing: bool = True,
) -> dict[str, Any]:
    """Write tar, then parquet, then stats (the completion marker). Returns the stats.

    ``record_timing=False`` leaves wall-clock times out, so a rerun writes identical bytes.
    """
    fs, prefix = filesystem(out_url, storage_options)
    started = time.time()
    write_bytes_atomic(fs, join(prefix, f"{name}.tar"), _tar_bytes(samples))
    write_bytes_atomic(fs, join(prefix, f"{name}.parquet"), _parquet_bytes(samples))
    failures: dict[str, int] = {}
    for s in samples:
        if s.error:
            reason = s.error.split(":")[0]
            failures[reason] = failures.get(reason, 0) + 1
    stats = {
        "count": len(samples),
        "successes": sum(1 for s in samples if not s.error),
        "failed": sum(1 for s in samples if s.error),
        "status_dict": {"success": sum(1 for s in samples if not s.error), **failures},
        "mempipe_version": __version__,
        **(extra_stats or {}),
    }
    if record_timing:
        stats["write_seconds"] = round(time.time() - started, 3)
    write_bytes_atomic(fs, stats_path(prefix, name), json.dumps(stats, indent=2, sort_keys=True).encode())
    return stats


def shard_done(out_url: str, name: str, storage_options: dict | None = None) -> bool:
    fs, prefix = filesystem(out_url, storage_options)
    return fs.exists(stats_path(prefix, name))
