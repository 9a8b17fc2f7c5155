import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mempipe.io import storage
from mempipe.io.images import ImageError, decode_rgb
from mempipe.run.samples import read_shard
from mempipe.io.shards import ShardOutput, iter_shard, list_shards, shard_done, write_shard

from helpers import image_bytes, make_tar, sample_members


def _outputs(n=3):
    return [ShardOutput(f"0000{i}", image_bytes(seed=i), "png", f"caption {i}", {"key": f"0000{i}", "width": 32})
            for i in range(n)]


def test_round_trip_local(tmp_path):
    stats = write_shard(str(tmp_path), "00000", _outputs())
    assert stats["count"] == 3 and stats["successes"] == 3
    samples = list(iter_shard(str(tmp_path / "00000.tar")))
    assert [s.key for s in samples] == ["00000", "00001", "00002"]
    assert samples[1].caption == "caption 1" and samples[1].meta["width"] == 32 and samples[1].image_ext == "png"
    assert samples[1].image == image_bytes(seed=1)
    table = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    assert [r["status"] for r in table] == ["success"] * 3
    assert shard_done(str(tmp_path), "00000")


def test_writer_is_byte_identical_on_rerun(tmp_path):
    write_shard(str(tmp_path / "a"), "00000", _outputs())
    write_shard(str(tmp_path / "b"), "00000", _outputs())
    assert (tmp_path / "a/00000.tar").read_bytes() == (tmp_path / "b/00000.tar").read_bytes()
    with tarfile.open(tmp_path / "a/00000.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}


def test_stats_written_last_so_a_failed_write_never_looks_complete(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    def disk_full_for_parquet(path, mode="r", *args, **kwargs):
        if "w" in mode and ".parquet." in str(path):
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setenv("MEMPIPE_IO_MAX_WAIT", "0.01")
    monkeypatch.setattr(builtins, "open", disk_full_for_parquet)
    with pytest.raises(OSError, match="after 4 attempts"):
        write_shard(str(tmp_path), "00000", _outputs())
    assert (tmp_path / "00000.tar").exists()
    assert not shard_done(str(tmp_path), "00000")
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*"))


def test_failed_samples_go_to_parquet_not_tar(tmp_path):
    outs = _outputs(2) + [ShardOutput("bad", None, None, None, {}, "cannot decode image: boom")]
    write_shard(str(tmp_path), "00000", outs)
    assert [s.key for s in iter_shard(str(tmp_path / "00000.tar"))] == ["00000", "00001"]
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "00000.parquet").to_pylist()}
    assert rows["bad"]["status"] == "failed" and "boom" in rows["bad"]["error_message"]
    stats = json.loads((tmp_path / "00000_stats.json").read_text())
    assert stats["failed"] == 1 and stats["successes"] == 2


def test_list_shards_folder_single_and_brace(tmp_path):
    for i in range(3):
        write_shard(str(tmp_path), f"{i:05d}", _outputs(1))
    assert [p.rsplit("/", 1)[-1] for p in list_shards(str(tmp_path))] == ["00000.tar", "00001.tar", "00002.tar"]
    assert len(list_shards(str(tmp_path / "00001.tar"))) == 1
    assert len(list_shards(str(tmp_path) + "/{00000..00001}.tar")) == 2
    with pytest.raises(FileNotFoundError):
        list_shards(str(tmp_path) + "/{00000..00009}.tar")
    with pytest.raises(FileNotFoundError):
        list_shards(str(tmp_path / "missing"))


def _read_all(tmp_path, members):
    path = tmp_path / "in.tar"
    make_tar(path, members)
    work = read_shard(str(path), None)
    return {d.raw.key: d for d in work.decoded}, {f.key: f.error for f in work.failed}


def test_bad_inputs_become_records_and_the_shard_goes_on(tmp_path):
    members = (
        sample_members("ok1")
        + sample_members("notimage", img=b"this is not an image")
        + [("nocap.png", image_bytes()), ("nocap.json", b"{}")]
        + sample_members("badutf", caption="x") [:1] + [("badutf.txt", b"\xff\xfe caption")]
        + sample_members("brokenjson")[:2] + [("brokenjson.json", b"{not json")]
        + [("../escape.png", image_bytes()), ("../escape.txt", b"evil")]
        + [("/abs/path.png", image_bytes())]
        + sample_members("tiny", img=image_bytes(size=(1, 1)))
        + sample_members("gray", img=image_bytes("L"))
        + sample_members("cmyk", img=image_bytes("CMYK", fmt="JPEG"), ext="jpg")
        + sample_members("alpha", img=image_bytes("RGBA"))
        + sample_members("ok2")
        + sample_members("ok1")  # duplicate key, not consecutive
    )
    decoded, failed = _read_all(tmp_path, members)
    assert set(decoded) == {"ok1", "brokenjson", "gray", "cmyk", "alpha", "ok2"}
    assert "cannot decode image" in failed["notimage"]
    assert failed["nocap"] == "missing caption (.txt)"
    assert "not valid UTF-8" in failed["badutf"]
    assert "unsafe member name" in failed["../escape.png"] and "unsafe member name" in failed["/abs/path.png"]
    assert "too small" in failed["tiny"]
    assert "duplicate key" in failed["ok1"]
    assert any("metadata json ignored" in w for w in decoded["brokenjson"].raw.warnings)
    for key in ("gray", "cmyk", "alpha"):
        assert decoded[key].pixels.shape[2] == 3
    assert decoded["gray"].source_mode == "L" and decoded["alpha"].source_mode == "RGBA"
    assert not (tmp_path.parent / "escape.png").exists()


def test_truncated_tar_keeps_the_samples_before_the_break(tmp_path):
    path = tmp_path / "full.tar"
    make_tar(path, sample_members("a") + sample_members("b") + sample_members("c"))
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    samples = list(iter_shard(str(cut)))
    good = [s.key for s in samples if not s.error]
    bad = [s for s in samples if s.error]
    assert good[:1] == ["a"] and bad and "truncated" in bad[-1].error


def test_decompression_bomb_is_refused():
    big = Image.new("RGB", (12000, 8000))
    import io

    buf = io.BytesIO()
    big.save(buf, format="PNG")
    with pytest.raises(ImageError, match="too large|bomb"):
        decode_rgb(buf.getvalue())


def test_redact_hides_credentials():
    opts = {"key": "AKIA", "secret": "s3cr3t", "client_kwargs": {"endpoint_url": "http://x", "aws_session_token": "t"}}
    red = storage.redact(opts)
    assert "s3cr3t" not in json.dumps(red) and "AKIA" not in json.dumps(red)
    assert red["client_kwargs"]["endpoint_url"] == "http://x"


def test_storage_options_must_be_a_json_object():
    with pytest.raises(ValueError, match="not valid JSON"):
        storage.parse_storage_options("{bad")
    with pytest.raises(ValueError, match="JSON object"):
        storage.parse_storage_options("[1]")
