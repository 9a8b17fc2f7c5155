"""Filesystem access for any fsspec URL (local path, s3://, ...).

S3 settings come from the standard AWS environment variables (botocore reads the
credentials itself) or from an explicit ``--storage-options`` JSON. Credentials are
never logged: use :func:`redact` before printing or recording options.
"""
from __future__ import annotations

import json
import os
import re
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


def _with_env_endpoint(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """Point s3fs at AWS_ENDPOINT_URL (MinIO, moto, ...) unless the options already say where."""
    if not url.startswith(("s3://", "s3a://")):
        return options
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs = dict(options.get("client_kwargs") or {})
    if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in options:
        client_kwargs["endpoint_url"] = endpoint
    merged = dict(options)
    if client_kwargs:
        merged["client_kwargs"] = client_kwargs
    return merged


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, path)`` for a URL; ``path`` is what the filesystem's methods take."""
    options = _with_env_endpoint(url, dict(storage_options or {}))
    fs, path = url_to_fs(url, **options)
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


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a whole file so that a reader never sees it half-written.

    Object stores publish an object only when its upload completes; on a local disk we
    write a temporary sibling and rename it into place.
    """
    if is_local(fs):
        parent = path.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        tmp = path + ".partial"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)
