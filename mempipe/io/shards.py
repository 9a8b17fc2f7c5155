"""Webdataset shards in the img2dataset layout: list, stream, write.

Reading streams a tar member by member (``tarfile`` in stream mode over an fsspec file),
so nothing is extracted to disk and a truncated or hostile shard costs only the samples
it really breaks. Writing produces ``NNNNN.tar``, ``NNNNN.parquet`` and, last,
``NNNNN_stats.json``: a shard with a stats file is complete.
"""
from __future__ import annotations

import hashlib
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

from .. import __version__
from .images import IMAGE_EXTENSIONS
from .storage import filesystem, join, open_for_reading, write_bytes_atomic

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
    provenance: Any = None   # a protected sample's SampleProvenance, until the shard is published


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


@dataclass(frozen=True)
class ReadLimits:
    """What one shard may cost a reader: crawled shards are untrusted input.

    ``max_member_bytes``: a single tar member (an image, a caption) larger than this is refused;
    ``max_shard_bytes``: member bytes kept in memory for one shard; ``max_shard_pixels``: decoded
    pixels for one shard (a shard of huge, flat PNGs compresses to little and decodes to a lot).
    Samples beyond a budget are recorded as failed, with the reason, and the shard goes on.
    """

    max_member_bytes: int = 64 * 2**20
    max_shard_bytes: int = 4 * 2**30
    max_shard_pixels: int = 2_000_000_000

    @classmethod
    def from_megabytes(cls, member_mb: float | None = None, shard_mb: float | None = None,
                       shard_megapixels: float | None = None) -> "ReadLimits":
        base = cls()
        return cls(int(member_mb * 2**20) if member_mb else base.max_member_bytes,
                   int(shard_mb * 2**20) if shard_mb else base.max_shard_bytes,
                   int(shard_megapixels * 1e6) if shard_megapixels else base.max_shard_pixels)


DEFAULT_LIMITS = ReadLimits()


class ShardReadError(OSError):
    """The storage failed while a shard was read (not its format): retry, then fail the shard."""


class _StorageReader:
    """Wraps the storage's file so that its errors are told apart from the tar parser's."""

    def __init__(self, f) -> None:
        self._f = f

    def read(self, size: int = -1) -> bytes:
        try:
            return self._f.read(size)
        except Exception as exc:
            raise ShardReadError(f"{type(exc).__name__}: {exc}") from exc


def _safe_member(name: str) -> bool:
    return not (name.startswith("/") or ".." in name.split("/") or "\\" in name or "\x00" in name)


def _member_key(name: str) -> str:
    match = _MEMBER.match(name)
    return match.group(1) if match else name


def _refusal(info: tarfile.TarInfo, limits: ReadLimits) -> str | None:
    """Why a member is refused before its data is read, or None."""
    if info.issparse():
        return f"sparse tar member {info.name!r} refused (it could expand far beyond its stored size)"
    if not info.isfile():
        kind = "symlink" if info.issym() else "hard link" if info.islnk() else "device or fifo"
        return f"non-regular tar member {info.name!r} ({kind}) refused"
    if not _safe_member(info.name):
        return f"unsafe member name {info.name!r} (absolute or '..'); skipped"
    if not _MEMBER.match(info.name):
        return f"member name {info.name!r} has no extension; skipped"
    if info.size > limits.max_member_bytes:
        return f"member too large: {info.name!r} is {info.size} bytes (limit {limits.max_member_bytes})"
    return None


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


def _format_problem(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return "not a plain tar: gzip-compressed data in a .tar shard (decompress it first)"
    if head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[:4] == b"\x28\xb5\x2f\xfd":
        return "not a plain tar: compressed data in a .tar shard (decompress it first)"
    return "not a tar archive"


def iter_shard(url: str, storage_options: dict | None = None,
               limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawSample]:
    """Stream the samples of one shard. Format problems become samples with ``error`` set;
    storage failures raise :class:`ShardReadError` (use :func:`read_samples` to retry them).

    A ``.tar`` is read as a plain tar only: compressed data is refused, not expanded. A shard
    that ends without tar's end-of-archive blocks is reported as truncated, and the sample it
    was cut in is recorded as failed.
    """
    name = shard_name(url)
    fs, path = filesystem(url, storage_options)
    seen: set[str] = set()
    current: RawSample | None = None
    members: dict[str, bytes] = {}
    complete = 0  # members read whole
    kept = 0      # member bytes held for this shard

    def flush() -> Iterator[RawSample]:
        if current is not None:
            yield _finish(current, members)

    def truncated(reason: str) -> Iterator[RawSample]:
        """The sample the shard was cut in is failed with the reason (or one record for the shard)."""
        if current is not None:
            current.error = current.error or reason
            yield from flush()
        else:
            yield RawSample(key=f"{name}/<truncated>", shard=name, error=reason)

    try:
        raw = open_for_reading(fs, path)
    except Exception as exc:
        raise ShardReadError(f"cannot open {url}: {type(exc).__name__}: {exc}") from exc
    with raw:
        reader = _StorageReader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for info in tar:
                    if info.isdir():
                        continue
                    refusal = _refusal(info, limits)
                    if refusal is None and kept + info.size > limits.max_shard_bytes:
                        refusal = f"shard byte budget exhausted ({limits.max_shard_bytes} bytes held)"
                    # an unsafe or extension-less name is its own record, never grouped with others
                    key = _member_key(info.name) if _safe_member(info.name) else info.name
                    if refusal:
                        if current is not None and key == current.key:
                            current.error = current.error or refusal
                        else:
                            yield from flush()
                            current, members = RawSample(key=key, shard=name, error=refusal), {}
                            seen.add(key)
                        complete += 1
                        continue
                    ext = info.name[len(key) + 1:].lower()
                    if current is None or key != current.key:
                        yield from flush()
                        current, members = RawSample(key=key, shard=name), {}
                        if key in seen:
                            current.error = "duplicate key: it appeared earlier in the shard"
                        seen.add(key)
                    data = tar.extractfile(info).read()
                    complete += 1
                    if ext in members and not current.error:
                        current.error = f"duplicate member {key}.{ext}"
                    members[ext] = data
                    kept += len(data)
                data_end = tar.offset  # where the end-of-archive blocks must start
        except ShardReadError:
            raise
        except (tarfile.TarError, EOFError) as exc:
            if complete == 0 and current is None:
                try:
                    raw.seek(0)
                    head = raw.read(8)
                except Exception as read_exc:
                    raise ShardReadError(f"{type(read_exc).__name__}: {read_exc}") from read_exc
                problem = "empty file" if not head else _format_problem(head)
                yield RawSample(key=f"{name}/<unreadable>", shard=name, error=f"{problem} ({exc})")
                return
            yield from truncated(f"truncated shard after {complete} members ({exc})")
            return
        # tar ends with zero blocks; a shard cut at a member boundary lacks them, and tarfile
        # then stops without an error
        try:
            raw.seek(data_end)
            tail = raw.read(512)
        except Exception as exc:
            raise ShardReadError(f"{type(exc).__name__}: {exc}") from exc
        if len(tail) < 512 or tail.strip(b"\x00"):
            yield from truncated(f"truncated shard after {complete} members (no end-of-archive marker)")
            return
        yield from flush()


def read_samples(url: str, storage_options: dict | None = None,
                 limits: ReadLimits = DEFAULT_LIMITS) -> list[RawSample]:
    """Every sample of one shard, the whole read retried on storage errors (connection resets,
    throttling, expired tokens); raises :class:`mempipe.io.retry.StorageError` when they persist."""
    from .retry import with_retries

    return with_retries(f"read shard {shard_name(url)}", lambda: list(iter_shard(url, storage_options, limits)))


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
    files = {}
    for ext, data in (("tar", _tar_bytes(samples)), ("parquet", _parquet_bytes(samples))):
        write_bytes_atomic(fs, join(prefix, f"{name}.{ext}"), data)
        files[ext] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
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
        "files": files,  # what this stats file vouches for: a tar or parquet of another run would not match
        **(extra_stats or {}),
    }
    if record_timing:
        stats["write_seconds"] = round(time.time() - started, 3)
    write_bytes_atomic(fs, stats_path(prefix, name), json.dumps(stats, indent=2, sort_keys=True).encode())
    return stats


def shard_done(out_url: str, name: str, storage_options: dict | None = None) -> bool:
    fs, prefix = filesystem(out_url, storage_options)
    return fs.exists(stats_path(prefix, name))


def done_shards(out_url: str, storage_options: dict | None = None) -> set[str]:
    """Names of the shards complete under ``out_url``, from one listing (not one request per shard)."""
    from .retry import with_retries

    fs, prefix = filesystem(out_url, storage_options)

    def listing() -> list[str]:
        try:
            return fs.ls(prefix, detail=False, refresh=True)  # refresh: never a cached listing
        except FileNotFoundError:
            return []

    suffix = "_stats.json"
    return {p.rsplit("/", 1)[-1][: -len(suffix)] for p in with_retries("list output", listing) if p.endswith(suffix)}
