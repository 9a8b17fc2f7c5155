"""Where a URL really points, so that the input, the output and the private record can be told
apart however they are spelled (``in`` / ``./in/`` / an absolute path / a symlink, ``s3://`` /
``s3a://``).

Protection must never write under its input: a string comparison lets ``in`` and ``./in``
through, so locations are compared after normalising the protocol and, for local paths,
resolving them with ``realpath``.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

from fsspec.core import split_protocol

# spellings of one store (Hadoop's s3a/s3n, fsspec's local)
PROTOCOL_ALIASES = {"s3a": "s3", "s3n": "s3", "local": "file", "gs": "gcs", "abfss": "abfs"}


@dataclass(frozen=True)
class Location:
    protocol: str
    path: str  # normalised: no trailing slash, resolved for local paths

    def contains(self, other: "Location") -> bool:
        """True when ``other`` is this location or lies under it."""
        if self.protocol != other.protocol:
            return False
        if self.path in ("", "/"):
            return True
        return other.path == self.path or other.path.startswith(self.path + "/")

    def __str__(self) -> str:
        return self.path if self.protocol == "file" else f"{self.protocol}://{self.path}"


def _prefix(url: str) -> str:
    """The folder a brace pattern (``in/{00000..00009}.tar``) lives in; other URLs unchanged."""
    if "{" in url:
        head = url.split("{", 1)[0]
        return head if head.endswith("/") else head.rsplit("/", 1)[0]
    return url


def locate(url: str) -> Location:
    url = _prefix(url.split("::")[-1])  # a chained URL (simplecache::s3://...) is stored at its last part
    protocol, path = split_protocol(url)
    protocol = PROTOCOL_ALIASES.get(protocol or "file", protocol or "file")
    if protocol == "file":
        return Location("file", os.path.realpath(os.path.expanduser(path)))
    path = posixpath.normpath("/" + path.strip("/")).lstrip("/") if path.strip("/") else ""
    return Location(protocol, path)


def check_locations(input_url: str, output_url: str, record_url: str | None = None) -> None:
    """Refuse any overlap between input, output and private record (raises ValueError)."""
    where = {"input": locate(input_url), "output": locate(output_url)}
    if record_url:
        where["private record"] = locate(record_url)
    names = list(where)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            la, lb = where[a], where[b]
            if la == lb:
                raise ValueError(f"the {b} must not be the {a} ({la}): protection never writes over its input, "
                                 "and the private record lives apart from the published output")
            if la.contains(lb):
                raise ValueError(f"the {b} ({lb}) lies inside the {a} ({la}): they must not overlap")
            if lb.contains(la):
                raise ValueError(f"the {a} ({la}) lies inside the {b} ({lb}): they must not overlap")
