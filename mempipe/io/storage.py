"""Filesystem access for any fsspec URL (local path, s3://, ...).

S3 settings come from the standard AWS environment variables (botocore reads the
credentials itself) or from an explicit ``--storage-options`` JSON. Credentials are
never logged: use :func:`redact` before printing or recording options.
"""
from __future__ import annotations

import json
import logging
import os
import re
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs

_SECRET_KEY = re.compile(r"(key|secret|token|password|credential)", re.IGNORECASE)


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """Parse the ``--storage-options`` JSON; a clear error when it is not a JSON object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--storage-options is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ValueError("--storage-options must be a JSON object")
    return value


# botocore retries each S3 request (throttling, 5xx, connection errors, read timeouts) in its
# "standard" mode; a stalled connection times out instead of hanging a worker forever.
S3_CONFIG_DEFAULTS = {"retries": {"mode": "standard", "max_attempts": 5}, "connect_timeout": 10,
                      "read_timeout": 60}


def _with_env_endpoint(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """Point s3fs at AWS_ENDPOINT_URL (MinIO, moto, ...) unless the options already say where, and
    give botocore its retry and timeout defaults unless the options set their own."""
    if not url.startswith(("s3://", "s3a://")):
        return options
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs = dict(options.get("client_kwargs") or {})
    if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in options:
        client_kwargs["endpoint_url"] = endpoint
    merged = dict(options)
    if client_kwargs:
        merged["client_kwargs"] = client_kwargs
    merged["config_kwargs"] = {**S3_CONFIG_DEFAULTS, **(options.get("config_kwargs") or {})}
    return merged


# what a retry is counted as: a part of a large object (an upload part, a ranged read) or a request
PART_OPERATIONS = ("UploadPart", "GetObject")


def _retry_kind(event_name: str) -> str:
    operation = event_name.rsplit(".", 1)[-1]
    return "s3 part (botocore)" if operation in PART_OPERATIONS else "s3 request (botocore)"


class _S3fsRetries(logging.Filter):
    """Counts the retries s3fs makes itself (a ranged read whose body was cut, a throttled call),
    which it reports only as debug lines; every other line passes at the level it passed before."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.DEBUG and record.msg in ("Retryable error: %s", "Client error (maybe retryable): %s"):
            from .retry import retry_counts

            retry_counts["s3 part or call (s3fs)"] += 1
        return record.levelno >= self.level


def _count_request_retries(fs: fsspec.AbstractFileSystem) -> None:
    """Count botocore's own request retries (attempts sent minus API calls made, parts apart from
    other requests) and s3fs's retries into the run's retry counts; registered once per S3 client."""
    if getattr(fs, "_mempipe_counting", False):
        return
    from .retry import retry_counts

    fs.connect()
    events = fs.s3.meta.events

    def on_call(event_name: str = "", **_):
        retry_counts[_retry_kind(event_name)] -= 1

    def on_send(event_name: str = "", **_):
        retry_counts[_retry_kind(event_name)] += 1

    events.register("before-call.s3", on_call)
    events.register("before-send.s3", on_send)
    s3fs_log = logging.getLogger("s3fs")
    if not any(isinstance(f, _S3fsRetries) for f in s3fs_log.filters):
        s3fs_log.addFilter(_S3fsRetries(s3fs_log.getEffectiveLevel()))
        s3fs_log.setLevel(logging.DEBUG)
    fs._mempipe_counting = True


def _retry_resets_in_s3fs() -> None:
    """A connection reset while a request body is being sent (an upload part in mid-transfer) comes
    back from aiobotocore as EndpointConnectionError, which s3fs does not retry: register it (s3fs's
    own hook), so that each part gets s3fs's retries on top of botocore's."""
    import botocore.exceptions
    import s3fs.core

    if botocore.exceptions.EndpointConnectionError not in s3fs.core.S3_RETRYABLE_ERRORS:
        s3fs.core.add_retryable_error(botocore.exceptions.EndpointConnectionError)


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, path)`` for a URL; ``path`` is what the filesystem's methods take."""
    options = _with_env_endpoint(url, dict(storage_options or {}))
    fs, path = url_to_fs(url, **options)
    if is_s3(fs):
        _retry_resets_in_s3fs()
        _count_request_retries(fs)
    return fs, path.rstrip("/") if path not in ("/",) else path


def join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def redact(value: Any) -> Any:
    """A copy of options/records with every credential-looking value replaced by '***'."""
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _write_once(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    if is_local(fs):
        parent, name = path.rsplit("/", 1)
        os.makedirs(parent, exist_ok=True)
        # a unique sibling: two writers never share a temporary file, and rename is atomic
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.partial"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    else:
        # one PUT (or a multipart upload that is aborted on error): an object store shows the
        # object under its name only once the upload completed; a file handle's close() would
        # commit whatever was buffered, even after an exception
        if is_s3(fs):
            # objects over two parts go up as a multipart upload of PART_BYTES parts, each part its own
            # request (retried by botocore and s3fs on its own); a part that fails for good aborts the
            # upload, so no object appears under the name
            fs.pipe_file(path, data, chunksize=part_bytes())
        else:
            fs.pipe_file(path, data)


def part_bytes() -> int:
    """Multipart upload part size (``MEMPIPE_PART_MB``, default 5 MiB, S3's smallest: the shortest
    transfer, the likeliest to get through a flaky link)."""
    return max(5, int(os.environ.get("MEMPIPE_PART_MB", "5"))) * 2**20


def read_part_bytes() -> int:
    """Ranged-read size (``MEMPIPE_READ_MB``, default 1 MiB; reads have no smallest size). A range
    cut in mid-transfer is fetched again alone."""
    return max(1, int(float(os.environ.get("MEMPIPE_READ_MB", "1")) * 2**20))


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a whole file so that a reader never sees it half-written; I/O errors retried."""
    from .retry import with_retries

    with_retries(f"write {path.rsplit('/', 1)[-1]}", lambda: _write_once(fs, path, data))


def is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return type(fs).__name__ == "S3FileSystem"


def open_for_reading(fs: fsspec.AbstractFileSystem, path: str):
    """A file to stream from. On S3 it reads in ranged GETs of ``read_part_bytes()`` each, each
    retried by s3fs on its own: a reset in mid-transfer costs one range, not the object."""
    return fs.open(path, "rb", block_size=read_part_bytes()) if is_s3(fs) else fs.open(path, "rb")


def _read_in_parts(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    if not is_s3(fs):
        return fs.cat_file(path)
    chunks = []
    with open_for_reading(fs, path) as f:
        while chunk := f.read(read_part_bytes()):   # one ranged GET per part (a whole read() would be one GET)
            chunks.append(chunk)
    return b"".join(chunks)


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """A whole file (records, checkpoints), in parts on S3; I/O errors retried, a missing file not."""
    from .retry import with_retries

    def once() -> bytes:
        try:
            return _read_in_parts(fs, path)
        except FileNotFoundError as exc:
            raise _Missing(str(exc)) from None

    try:
        return with_retries(f"read {path.rsplit('/', 1)[-1]}", once)
    except _Missing as exc:
        raise FileNotFoundError(str(exc)) from None


class _Missing(ValueError):
    """A missing file: an answer, not a fault, so never retried."""


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create ``path`` only if it does not exist (a lock): O_EXCL locally, a conditional PUT
    (If-None-Match: *) on S3. False when it already exists."""
    if is_local(fs):
        os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    try:
        fs.pipe_file(path, data, mode="create")
    except (FileExistsError, OSError) as exc:
        if isinstance(exc, FileExistsError) or "PreconditionFailed" in str(exc) or "412" in str(exc):
            return False
        raise
    return True
