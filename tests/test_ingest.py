"""``mempipe ingest`` on tiny fake datasets in each layout: every caption row ends up a shard
sample with the right caption or a failed parquet row with the reason."""
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mempipe_research.testing import fast_config as write_fast_config
from mempipe.cli import main
from mempipe.io.shards import iter_shard, list_shards

CAPTIONS = {  # image -> its captions (one caption holds a comma, as Flickr8K's do)
    "a.jpg": ["a dog runs, jumps", "a brown dog"],
    "b.jpg": ["two kids on a swing", "children play"],
    "c.png": ["a red car", "a car on a road"],
    "broken.jpg": ["never decodes", "still never decodes"],
    "missing.jpg": ["no file for this one", "nor for this"],
}


def _write_images(folder, exif_rotate: str = "a.jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for name in ("a.jpg", "b.jpg", "c.png"):
        image = Image.fromarray(rng.randint(0, 255, (60, 90, 3), dtype=np.uint8))   # 90 wide, 60 high
        if name == exif_rotate:  # stored landscape, EXIF says rotate: a viewer shows it portrait
            exif = Image.Exif()
            exif[0x0112] = 6
            image.save(folder / name, exif=exif.tobytes(), quality=95)
        else:
            image.save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")


def _check(out, expected_rows: int, captions_per_image: int = 2):
    samples = [s for url in list_shards(str(out)) for s in iter_shard(url)]
    failed = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("*.parquet"))])
    assert len(failed) == expected_rows                              # one parquet row per caption row
    assert len(samples) + int((failed.status == "failed").sum()) == expected_rows
    good = {c for name in ("a.jpg", "b.jpg", "c.png") for c in CAPTIONS[name][:captions_per_image]}
    assert {s.caption for s in samples} == good
    for s in samples:
        image = Image.open(io.BytesIO(s.image))
        assert s.image_ext == "jpg" and image.format == "JPEG"
        assert s.meta["caption"] == s.caption and s.meta["status"] == "success"
        if s.meta["image_id"].endswith("a.jpg"):
            assert image.size == (60, 90)                            # EXIF rotation applied
    reasons = dict(zip(failed.caption, failed.error_message))
    assert reasons["never decodes"].startswith("cannot decode image")
    assert reasons["no file for this one"].startswith("missing image")
    for p in out.glob("*_stats.json"):
        stats = json.loads(p.read_text())
        assert stats["count"] == stats["successes"] + stats["failed"]
    return samples


def test_csv_with_the_authors_columns(tmp_path):
    _write_images(tmp_path / "imgs")
    rows = [{"images": f"imgs/{n}", "caption": c} for n, caps in CAPTIONS.items() for c in caps]
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    assert main(["ingest", str(tmp_path / "train.csv"), str(tmp_path / "out"), "--format", "csv",
                 "--per-shard", "4"]) == 0
    assert len(list((tmp_path / "out").glob("*.tar"))) == 3          # 10 rows in shards of 4
    _check(tmp_path / "out", 10)


def test_csv_with_named_columns_and_image_root(tmp_path):
    _write_images(tmp_path / "pics")
    rows = [{"file": n, "text": c} for n, caps in CAPTIONS.items() for c in caps]
    pd.DataFrame(rows).to_csv(tmp_path / "list.tsv", index=False, sep="\t")
    assert main(["ingest", str(tmp_path / "list.tsv"), str(tmp_path / "out"), "--format", "csv", "--image-column",
                 "file", "--image-root", str(tmp_path / "pics"), "--captions", "first"]) == 0
    _check(tmp_path / "out", 5, captions_per_image=1)


def test_flickr8k_layout_and_seeded_split(tmp_path):
    _write_images(tmp_path / "Images")
    lines = ["image,caption"] + [f"{n},{c}" for n, caps in CAPTIONS.items() for c in caps]
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    assert main(["ingest", str(tmp_path), str(tmp_path / "out"), "--format", "flickr8k"]) == 0
    _check(tmp_path / "out", 10)
    # a seeded split keeps every caption of an image on one side
    assert main(["ingest", str(tmp_path), str(tmp_path / "split"), "--format", "flickr8k", "--test-images", "2",
                 "--seed", "3"]) == 0
    sides = {}
    for side in ("train", "test"):
        table = pd.concat([pd.read_parquet(p) for p in (tmp_path / "split" / side).glob("*.parquet")])
        sides[side] = {json.loads(m)["image_id"] for m in table.metadata}
    assert len(sides["test"]) == 2 and len(sides["train"]) == 3 and not sides["train"] & sides["test"]


def test_flickr30k_layout_with_split_file(tmp_path):
    _write_images(tmp_path / "flickr30k_images")
    lines = ["image_name| comment_number| comment"] + [f"{n}| {i}| {c}" for n, caps in CAPTIONS.items()
                                                      for i, c in enumerate(caps)]
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")
    assert main(["ingest", str(tmp_path), str(tmp_path / "out"), "--format", "flickr30k"]) == 0
    _check(tmp_path / "out", 10)
    (tmp_path / "test_split.txt").write_text("b.jpg\nmissing.jpg\n")
    assert main(["ingest", str(tmp_path), str(tmp_path / "only"), "--format", "flickr30k", "--split-file",
                 str(tmp_path / "test_split.txt")]) == 0
    table = pd.read_parquet(tmp_path / "only" / "00000.parquet")
    assert sorted(table.caption) == sorted(CAPTIONS["b.jpg"] + CAPTIONS["missing.jpg"])


def test_coco_layout(tmp_path):
    _write_images(tmp_path / "val2017")
    names = list(CAPTIONS)
    images = [{"id": 10 + i, "file_name": n, "width": 90, "height": 60} for i, n in enumerate(names)]
    annotations = [{"id": 100 + 10 * i + j, "image_id": 10 + i, "caption": c + " "}
                   for i, n in enumerate(names) for j, c in enumerate(CAPTIONS[n])]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images,
                                                                                "annotations": annotations}))
    assert main(["ingest", str(tmp_path), str(tmp_path / "out"), "--format", "coco", "--annotations",
                 str(tmp_path / "annotations" / "captions_val2017.json"), "--max-size", "45"]) == 0
    samples = _check(tmp_path / "out", 10)
    assert all(max(Image.open(io.BytesIO(s.image)).size) == 45 for s in samples)   # resized, aspect kept


def test_ingest_refuses_what_it_cannot_read(tmp_path, capsys):
    pd.DataFrame({"who": ["x"], "what": ["y"]}).to_csv(tmp_path / "odd.csv", index=False)
    assert main(["ingest", str(tmp_path / "odd.csv"), str(tmp_path / "out"), "--format", "csv"]) == 2
    assert "cannot tell the image column" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--format", "flickr8k"]) == 2


@pytest.mark.parametrize("fmt", ["flickr8k"])
def test_ingested_shards_protect(tmp_path, fmt):
    """The ingested layout is protect's input layout: it protects without a conversion step."""
    _write_images(tmp_path / "Images")
    lines = ["image,caption"] + [f"{n},{c}" for n, caps in CAPTIONS.items() for c in caps]
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    assert main(["ingest", str(tmp_path), str(tmp_path / "shards"), "--format", fmt]) == 0
    cfg = write_fast_config(tmp_path, outer_iters=1, train_steps=2, pgd_steps=1, candidates=2, batch_size=4)
    assert main(["protect", str(tmp_path / "shards"), str(tmp_path / "protected"), "--config", str(cfg),
                 "--no-ray", "--quiet", "--provenance", "full"]) == 0
    protected = list(iter_shard(str(tmp_path / "protected" / "00000.tar")))
    assert len(protected) == 6 and all(s.meta["mempipe"]["max_delta"] <= 8 for s in protected)
