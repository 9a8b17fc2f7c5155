"""``mempipe ingest``: captioned image datasets on disk into img2dataset-layout shards.

The paper's datasets (Flickr8K, Flickr30K, MSCOCO) and a plain CSV of image paths and
captions become the same shards ``protect`` reads: ``{key}.jpg/.txt/.json`` in
``NNNNN.tar``, one parquet row per sample (failed rows carry the reason), and
``NNNNN_stats.json`` written last. Each layout is only a reader of (image, caption) rows;
splitting, image loading and shard writing are shared.

Images are EXIF-rotated, shrunk to ``max_size`` on their longer side and re-encoded once as
JPEG (an image with five captions is loaded and encoded once). A missing or undecodable
image fails its rows with the reason; the run goes on.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from ..io.images import ImageError, decode_image
from ..io.shards import ShardOutput, shard_done, write_shard
from ..io.storage import filesystem, join

FORMATS = ("csv", "flickr8k", "flickr30k", "coco")
IMAGE_COLUMNS = ("images", "image", "filepath", "file_name", "image_path", "path", "image_name")
CAPTION_COLUMNS = ("caption", "captions", "text", "comment", "title")


@dataclass(frozen=True)
class CaptionRow:
    image: str            # path or URL of the image file
    caption: str
    image_id: str         # whole images stay on one side of a split
    caption_index: int    # 0 for the first caption of an image


def _read_text(url: str, storage_options: dict | None) -> str:
    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"not found: {url}")
    with fs.open(path, "rb") as f:
        return f.read().decode("utf-8-sig")


def _dirname(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0] if "/" in url.rstrip("/") else "."


def _numbered(rows: list[tuple[str, str, str]]) -> list[CaptionRow]:
    """(image path, caption, image id) in file order -> rows with each image's caption index."""
    seen: dict[str, int] = {}
    out = []
    for image, caption, image_id in rows:
        index = seen.get(image_id, 0)
        seen[image_id] = index + 1
        out.append(CaptionRow(image, caption, image_id, index))
    return out


def _column(frame: pd.DataFrame, wanted: str | None, candidates: tuple[str, ...], what: str) -> str:
    if wanted:
        if wanted not in frame.columns:
            raise ValueError(f"no {what} column {wanted!r}; the file has {list(frame.columns)}")
        return wanted
    found = [c for c in candidates if c in frame.columns]
    if not found:
        raise ValueError(f"cannot tell the {what} column among {list(frame.columns)}; pass --{what}-column")
    return found[0]


def read_csv_rows(src: str, image_root: str | None, image_column: str | None, caption_column: str | None,
                  storage_options: dict | None) -> list[CaptionRow]:
    """A CSV (or TSV) of image paths, relative to ``image_root`` (default: the CSV's folder), and captions."""
    text = _read_text(src, storage_options)
    # the delimiter is read off the header line: captions hold commas (quoted), which can make a
    # sniff over whole rows fail
    header = text.splitlines()[0] if text else ""
    try:
        delimiter = csv.Sniffer().sniff(header, delimiters=",\t;|").delimiter
    except csv.Error:
        delimiter = next((d for d in ("\t", ";", "|") if d in header), ",")
    frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False, skipinitialspace=True)
    frame.columns = [c.strip() for c in frame.columns]
    image_col = _column(frame, image_column, IMAGE_COLUMNS, "image")
    caption_col = _column(frame, caption_column, CAPTION_COLUMNS, "caption")
    root = image_root or _dirname(src)
    return _numbered([(_under(root, name), caption, name) for name, caption in zip(frame[image_col], frame[caption_col])])


def _under(root: str, name: str) -> str:
    if "://" in name or name.startswith("/"):
        return name
    return join(root, name) if "://" in root else posixpath.join(root, name)


def read_flickr8k_rows(src: str, image_root: str | None, storage_options: dict | None) -> list[CaptionRow]:
    """``captions.txt`` (``image,caption`` with a header; captions may hold unquoted commas) and ``Images/``."""
    rows = []
    lines = _read_text(join(src, "captions.txt"), storage_options).splitlines()
    for line in lines[1:] if lines and lines[0].lower().startswith("image,") else lines:
        if not line.strip():
            continue
        name, _, caption = line.partition(",")
        caption = caption.strip()
        if len(caption) >= 2 and caption[0] == caption[-1] == '"':
            caption = caption[1:-1].replace('""', '"')
        rows.append((_under(image_root or join(src, "Images"), name.strip()), caption, name.strip()))
    return _numbered(rows)


def read_flickr30k_rows(src: str, image_root: str | None, storage_options: dict | None) -> list[CaptionRow]:
    """``results.csv`` (``image_name| comment_number| comment``) and ``flickr30k_images/``."""
    rows = []
    lines = _read_text(join(src, "results.csv"), storage_options).splitlines()
    for line in lines[1:] if lines and lines[0].replace(" ", "").startswith("image_name|") else lines:
        parts = [p.strip() for p in line.split("|", 2)]
        if len(parts) < 3 or not parts[0]:
            continue
        rows.append((_under(image_root or join(src, "flickr30k_images"), parts[0]), parts[2], parts[0]))
    return _numbered(rows)


def read_coco_rows(src: str, image_root: str | None, annotations: str | None,
                   storage_options: dict | None) -> list[CaptionRow]:
    """The captions JSON (default ``annotations/captions_train2017.json``) and its image folder
    (default: ``train2017/``, named after the annotation file)."""
    ann_url = annotations or join(src, "annotations/captions_train2017.json")
    data = json.loads(_read_text(ann_url, storage_options))
    split = posixpath.basename(ann_url).removesuffix(".json").split("_")[-1]
    root = image_root or join(src, split)
    files = {img["id"]: img["file_name"] for img in data["images"]}
    rows = []
    for ann in sorted(data["annotations"], key=lambda a: (a["image_id"], a["id"])):
        name = files.get(ann["image_id"])
        rows.append((_under(root, name) if name else f"<no image entry for id {ann['image_id']}>",
                     ann["caption"].strip(), str(ann["image_id"])))
    return _numbered(rows)


def select(rows: list[CaptionRow], captions: str, split_names: set[str] | None) -> list[CaptionRow]:
    if split_names is not None:
        rows = [r for r in rows if r.image_id in split_names or posixpath.basename(r.image) in split_names]
    if captions == "first":
        rows = [r for r in rows if r.caption_index == 0]
    elif captions != "all":
        raise ValueError(f"--captions is all or first, got {captions!r}")
    return rows


def seeded_split(rows: list[CaptionRow], test_images: int, seed: int) -> tuple[list[CaptionRow], list[CaptionRow]]:
    """(train, test) with ``test_images`` whole images in test: no image is on both sides."""
    ids = sorted({r.image_id for r in rows})
    if not 0 < test_images < len(ids):
        raise ValueError(f"--test-images must be between 1 and {len(ids) - 1} (the dataset has {len(ids)} images)")
    test_ids = set(np.asarray(ids)[np.random.RandomState(seed).permutation(len(ids))[:test_images]].tolist())
    return [r for r in rows if r.image_id not in test_ids], [r for r in rows if r.image_id in test_ids]


def load_image(url: str, max_size: int, storage_options: dict | None) -> tuple[bytes, dict]:
    """(JPEG bytes, size metadata): EXIF-rotated, longer side at most ``max_size``, encoded once."""
    fs, path = filesystem(url, storage_options)
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError):
        raise ImageError(f"missing image: {url}") from None
    image, _ = decode_image(data)   # the shared decoding: checked, EXIF-rotated, RGB as a viewer shows it
    original = image.size
    if max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), {"width": image.size[0], "height": image.size[1],
                            "original_width": original[0], "original_height": original[1]}


def _shard_samples(rows: list[CaptionRow], shard_id: int, max_size: int, source: str,
                   storage_options: dict | None, workers: int) -> list[ShardOutput]:
    unique = list(dict.fromkeys(r.image for r in rows))

    def load(url: str):
        try:
            return load_image(url, max_size, storage_options)
        except ImageError as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot read image: {type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        loaded = dict(zip(unique, pool.map(load, unique)))
    samples = []
    for i, row in enumerate(rows):
        key = f"{shard_id:05d}{i:04d}"
        result = loaded[row.image]
        meta = {"key": key, "url": row.image, "caption": row.caption, "image_id": row.image_id,
                "caption_index": row.caption_index, "source_format": source}
        if isinstance(result, str):
            samples.append(ShardOutput(key, None, None, row.caption, {**meta, "status": "failed",
                                                                       "error_message": result}, error=result))
            continue
        if not row.caption.strip():
            reason = "empty caption"
            samples.append(ShardOutput(key, None, None, row.caption, {**meta, "status": "failed",
                                                                       "error_message": reason}, error=reason))
            continue
        data, sizes = result
        samples.append(ShardOutput(key, data, "jpg", row.caption,
                                   {**meta, **sizes, "status": "success", "error_message": None,
                                    "sha256": hashlib.sha256(data).hexdigest()}))
    return samples


def write_rows(rows: list[CaptionRow], out: str, source: str, max_size: int, per_shard: int,
               storage_options: dict | None, workers: int = 8) -> dict:
    """Shards of ``per_shard`` rows under ``out``; shards already complete (stats present) are kept."""
    if not 1 <= per_shard <= 10_000:
        raise ValueError("--per-shard must be in 1..10000 (keys hold a 4-digit sample index)")
    counts = {"samples": 0, "failed": 0, "shards": 0, "shards_skipped": 0}
    for shard_id, start in enumerate(range(0, len(rows), per_shard)):
        name = f"{shard_id:05d}"
        if shard_done(out, name, storage_options):
            counts["shards_skipped"] += 1
            continue
        samples = _shard_samples(rows[start : start + per_shard], shard_id, max_size, source, storage_options, workers)
        stats = write_shard(out, name, samples, storage_options=storage_options,
                            extra_stats={"generator": f"mempipe ingest --format {source}"})
        counts["samples"] += stats["successes"]
        counts["failed"] += stats["failed"]
        counts["shards"] += 1
    return counts


@dataclass(frozen=True)
class Source:
    """A captioned image dataset as it lies: its folder or file, its format and where its parts are."""

    src: str
    fmt: str
    image_root: str | None = None
    annotations: str | None = None
    image_column: str | None = None
    caption_column: str | None = None
    storage_options: dict | None = None


def read_rows(source: Source) -> list[CaptionRow]:
    src, fmt, image_root, annotations = source.src, source.fmt, source.image_root, source.annotations
    image_column, caption_column, storage_options = source.image_column, source.caption_column, source.storage_options
    if fmt == "csv":
        return read_csv_rows(src, image_root, image_column, caption_column, storage_options)
    if fmt == "flickr8k":
        return read_flickr8k_rows(src, image_root, storage_options)
    if fmt == "flickr30k":
        return read_flickr30k_rows(src, image_root, storage_options)
    if fmt == "coco":
        return read_coco_rows(src, image_root, annotations, storage_options)
    raise ValueError(f"unknown --format {fmt!r}; choose from {FORMATS}")


def ingest(source: Source, out: str, captions: str = "all", split_file: str | None = None, test_images: int = 0,
           seed: int = 0, max_size: int = 512, per_shard: int = 1000) -> dict:
    """Write ``out`` (or ``out/train`` and ``out/test`` with ``test_images``); returns counts."""
    src, fmt, storage_options = source.src, source.fmt, source.storage_options
    rows = read_rows(source)
    split_names = None
    if split_file:
        split_names = {line.strip() for line in _read_text(split_file, storage_options).splitlines() if line.strip()}
    rows = select(rows, captions, split_names)
    if not rows:
        raise ValueError(f"no caption rows found in {src} ({fmt}) with the chosen split and captions")
    summary = {"source": src, "format": fmt, "captions": captions, "rows": len(rows),
               "images": len({r.image_id for r in rows})}
    if test_images:
        train, test = seeded_split(rows, test_images, seed)
        summary["train"] = write_rows(train, join(out, "train"), fmt, max_size, per_shard, storage_options)
        summary["test"] = write_rows(test, join(out, "test"), fmt, max_size, per_shard, storage_options)
    else:
        summary["output"] = write_rows(rows, out, fmt, max_size, per_shard, storage_options)
    return summary

