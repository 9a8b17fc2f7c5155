import hashlib
import json

from mempipe.cli import main
from mempipe.io.shards import iter_shard


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_determinism(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "a"), "--train", "120", "--test", "30", "--seed", "7"]) == 0
    assert main(["demo-data", str(tmp_path / "b"), "--train", "120", "--test", "30", "--seed", "7"]) == 0
    for split in ("train", "test"):
        names = sorted(p.name for p in (tmp_path / "a" / split).iterdir())
        assert names == ["00000.parquet", "00000.tar", "00000_stats.json"]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    samples = list(iter_shard(str(tmp_path / "a/train/00000.tar")))
    assert len(samples) == 120 and samples[0].key == "000000000" and samples[119].key == "000000119"
    assert all(s.image_ext == "jpg" and s.caption and s.meta["key"] == s.key for s in samples)
    stats = json.loads((tmp_path / "a/train/00000_stats.json").read_text())
    assert stats["count"] == 120 and stats["successes"] == 120


def test_captions_vary_in_template_and_word_position(tmp_path):
    main(["demo-data", str(tmp_path), "--train", "300", "--test", "10"])
    captions = [s.caption for s in iter_shard(str(tmp_path / "train/00000.tar"))]
    assert len(set(captions)) == len(captions)
    first_words = {c.split()[0] for c in captions}
    lengths = {len(c.split()) for c in captions}
    assert len(first_words) >= 8 and len(lengths) >= 8
    # a colour word is not pinned to one position
    positions = {next(i for i, w in enumerate(c.split()) if w in ("red", "green", "blue", "yellow", "purple", "orange",
                 "white", "black", "cyan", "pink", "brown", "gray")) for c in captions}
    assert len(positions) >= 6


def test_demo_splits_are_sharded_about_500(tmp_path):
    main(["demo-data", str(tmp_path), "--train", "1100", "--test", "10"])
    assert sorted(p.name for p in (tmp_path / "train").glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert list(iter_shard(str(tmp_path / "train/00001.tar")))[0].key == "000010000"


def test_photo_style_through_the_cli_is_deterministic(tmp_path):
    args = ["--train", "40", "--test", "10", "--seed", "2", "--style", "photo", "--difficulty", "0.3"]
    assert main(["demo-data", str(tmp_path / "a"), *args]) == 0
    assert main(["demo-data", str(tmp_path / "b"), *args]) == 0
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    samples = list(iter_shard(str(tmp_path / "a/train/00000.tar")))
    assert len(samples) == 40 and all(s.meta["scene"]["style"] == "photo" for s in samples)
    stats = json.loads((tmp_path / "a/train/00000_stats.json").read_text())
    assert stats["style"] == "photo" and stats["difficulty"] == 0.3
    assert main(["demo-data", str(tmp_path / "c"), "--train", "4", "--test", "1", "--difficulty", "0.3"]) == 2


def test_the_photo_difficulty_is_the_one_calibration_picked():
    """Frozen before any protected set was trained on: the constant and the calibration record agree."""
    from pathlib import Path

    from mempipe.data.demo_data import PHOTO_DIFFICULTY

    record = json.loads((Path(__file__).resolve().parent.parent / "bench/results/calibration.json").read_text())
    assert record["pick"]["difficulty"] == PHOTO_DIFFICULTY
    assert str(PHOTO_DIFFICULTY) in record["levels"] and "verdict" in record["levels"][str(PHOTO_DIFFICULTY)]


def test_several_captions_per_image_share_the_image_and_keep_variant_zero(tmp_path):
    """Flickr8K-shaped photo data: runs of n train pairs share one image's bytes and differ in caption;
    the first caption of each run is the single-caption set's caption; test stays one caption per image."""
    common = ["--test", "6", "--seed", "2", "--style", "photo", "--difficulty", "0.3"]
    assert main(["demo-data", str(tmp_path / "one"), "--train", "4", *common]) == 0
    assert main(["demo-data", str(tmp_path / "five"), "--train", "20", "--captions-per-image", "5", *common]) == 0
    one = list(iter_shard(str(tmp_path / "one/train/00000.tar")))
    five = list(iter_shard(str(tmp_path / "five/train/00000.tar")))
    assert len(five) == 20 and len({s.key for s in five}) == 20
    for image in range(4):
        run = five[5 * image:5 * image + 5]
        assert len({s.image for s in run}) == 1 and len({s.meta["url"] for s in run}) == 1
        assert run[0].image == one[image].image and run[0].caption == one[image].caption
        assert len({s.caption for s in run}) >= 3                      # independently drawn captions
        assert {o["shape"] for o in run[1].meta["scene"]["objects"]} == {o["shape"] for o in one[image].meta["scene"]["objects"]}
    assert len({s.image for s in five}) == 4
    assert _digest(tmp_path / "one/test") == _digest(tmp_path / "five/test")
    stats = json.loads((tmp_path / "five/train/00000_stats.json").read_text())
    assert stats["captions_per_image"] == 5
    assert main(["demo-data", str(tmp_path / "bad"), "--train", "4", "--test", "1", "--captions-per-image", "5"]) == 2
