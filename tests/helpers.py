"""Building blocks for hand-made (and hand-broken) shards in tests."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image


def image_bytes(mode: str = "RGB", size=(32, 32), fmt: str = "PNG", seed: int = 0) -> bytes:
    rng = np.random.RandomState(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4, "LA": 2}[mode]
    arr = rng.randint(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode if mode != "CMYK" else None) \
        if mode != "CMYK" else Image.fromarray(arr[..., :3]).convert("CMYK")
    if mode == "LA":
        image = Image.fromarray(arr, mode="LA")
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def make_tar(path, members: list[tuple[str, bytes]]) -> None:
    """A plain tar at ``path`` (a file name, or a binary file object)."""
    with (tarfile.open(fileobj=path, mode="w") if hasattr(path, "write") else tarfile.open(path, "w")) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sample_members(key: str, caption: str = "a red circle", img: bytes | None = None, ext: str = "png",
                   meta: dict | None = None) -> list[tuple[str, bytes]]:
    return [(f"{key}.{ext}", img if img is not None else image_bytes(seed=hash(key) % 1000)),
            (f"{key}.txt", caption.encode()),
            (f"{key}.json", json.dumps(meta or {"key": key}).encode())]


def private_meta(out) -> dict:
    """(shard, key) -> the full mempipe object, from the owner's private record beside ``out``."""
    from mempipe.io.provenance import default_record_url, read_private_samples

    return read_private_samples(default_record_url(str(out)))


def private_run(out) -> dict:
    from mempipe.io.provenance import PRIVATE_RUN, default_record_url

    with open(default_record_url(str(out)) + "/" + PRIVATE_RUN) as f:
        return json.load(f)
