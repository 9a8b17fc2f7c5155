"""Nothing lost, nothing overwritten: path spellings, a faulty S3 endpoint, hostile shards, locks,
secrets in logs, the workers' import path, high-depth and rotated images."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mempipe.cli import main
from mempipe.data.demo_data import write_split
from mempipe.io.images import decode_rgb
from mempipe.io.locations import check_locations, locate
from mempipe.io.locks import LOCK_FILE, OutputLock, OutputLocked
from mempipe.io.shards import iter_shard

from mempipe_research.testing import FaultProxy
from mempipe_research.testing import fast_config as write_fast_config
from helpers import make_tar, sample_members



def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def s3_keys(fs, prefix: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(protected keys, (failed key, reason)) over every output shard under an S3 prefix."""
    protected, failed = [], []
    for path in sorted(p for p in fs.ls(prefix) if p.endswith(".tar")):
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(path))) as tar:
            protected += sorted({m.name.rsplit(".", 1)[0] for m in tar.getmembers()})
    for path in sorted(p for p in fs.ls(prefix) if p.endswith(".parquet")):
        rows = pq.read_table(io.BytesIO(fs.cat_file(path))).to_pylist()
        failed += [(r["key"], r["error_message"]) for r in rows if r["status"] != "success"]
    return protected, failed


# ------------------------------------------------------------------ input and output never overlap

@pytest.fixture
def input_folder(tmp_path, monkeypatch):
    write_split(str(tmp_path / "in"), 6, 32, seed=1, first_index=0, per_shard=3)
    (tmp_path / "link").symlink_to(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "in"


@pytest.mark.parametrize("inp,out,record", [
    ("in", "./in", None), ("in", "in/", None), ("in", "{abs}/in", None), ("in", "link", None),
    ("./in/", "in/protected", None), ("in/00000.tar", "in", None), ("in", "file://{abs}/in", None),
    ("in", "out", "in/private"), ("in", "out", "out/private"), ("in", "out", "./out/"),
    ("in/{00000..00001}.tar", "in/out", None),
])
def test_every_spelling_of_an_overlap_is_refused_and_the_input_is_untouched(input_folder, capsys, inp, out, record):
    before = checksums(input_folder)
    absolute = str(input_folder.parent)
    argv = ["protect", inp, out.format(abs=absolute), "--no-ray", "--method", "random", "--quiet"]
    if record:
        argv += ["--record", record]
    assert main(argv) == 2
    assert "must not" in capsys.readouterr().err
    assert checksums(input_folder) == before
    assert not (input_folder.parent / "out").exists()


def test_object_store_spellings_are_one_location():
    assert locate("s3a://bucket/data/") == locate("s3://bucket/data") == locate("s3://bucket//data/.")
    with pytest.raises(ValueError, match="must not be the input"):
        check_locations("s3://bucket/data", "s3a://bucket/data/")
    with pytest.raises(ValueError, match="inside the input"):
        check_locations("s3://bucket/data", "s3a://bucket/data/protected", "s3://private/rec")
    with pytest.raises(ValueError, match="private record"):
        check_locations("s3://bucket/in", "s3://bucket/out", "s3://bucket/out/rec")
    check_locations("s3://bucket/data", "s3://bucket/data-protected", "s3://bucket/data-record")  # a sibling is fine
    check_locations("s3://bucket/data", "gcs://bucket/data")  # another store


# ------------------------------------------------------------------ a faulty S3 endpoint

@pytest.fixture
def faulty_s3(s3_server, s3_bucket, tmp_path, monkeypatch):
    """22 shards of 4 samples in S3 (written without faults), and a fault proxy in front of the server."""
    import s3fs

    write_split(str(tmp_path / "local"), 88, 32, seed=5, first_index=0, per_shard=4)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["AWS_ENDPOINT_URL"]})
    for path in sorted((tmp_path / "local").glob("*.tar")):
        fs.put_file(str(path), f"{s3_bucket}/in/{path.name}")
    monkeypatch.setenv("MEMPIPE_IO_MAX_WAIT", "0.5")
    keys = [s.key for p in sorted((tmp_path / "local").glob("*.tar")) for s in iter_shard(str(p))]
    return fs, s3_bucket, keys


def _options(proxy: FaultProxy, attempts: int = 5) -> str:
    """Short timeouts so that a stall costs a second; fewer attempts where a read must fail for good."""
    return json.dumps({"client_kwargs": {"endpoint_url": proxy.url},
                       "config_kwargs": {"read_timeout": 1, "connect_timeout": 1,
                                         "retries": {"mode": "standard", "max_attempts": attempts}}})


def test_a_run_through_resets_503s_stalls_and_cut_bodies_loses_nothing(s3_server, faulty_s3, capsys):
    fs, bucket, keys = faulty_s3
    with FaultProxy(s3_server["AWS_ENDPOINT_URL"], rate=0.2, seed=11, stall_seconds=1.5) as proxy:
        code = main(["protect", f"s3://{bucket}/in", f"s3://{bucket}/out", "--no-ray", "--method", "random",
                     "--quiet", "--storage-options", _options(proxy)])
    assert proxy.faults_injected() >= 10 and {"fault:reset", "fault:503", "fault:cut"} <= set(proxy.counts)
    protected, failed = s3_keys(fs, f"{bucket}/out")
    assert code == 0 and not failed
    assert sorted(protected) == sorted(keys) and len(protected) == len(set(protected))  # 0 lost, 0 duplicated
    record = json.loads(fs.cat_file(f"{bucket}/out/mempipe_run.json"))
    assert record["shards_written"] == 22 and record["shards_failed"] == []
    assert sum(record["retries"].values()) >= 1  # retried above botocore's own request retries
    assert not fs.exists(f"{bucket}/out/{LOCK_FILE}")
    stats = json.loads(fs.cat_file(f"{bucket}/out/00000_stats.json"))
    tar = fs.cat_file(f"{bucket}/out/00000.tar")
    assert stats["files"]["tar"] == {"bytes": len(tar), "sha256": hashlib.sha256(tar).hexdigest()}
    assert stats["run_id"] == record["run_id"]


def test_a_shard_whose_reads_keep_failing_fails_loudly_then_succeeds_on_rerun(s3_server, faulty_s3, capsys,
                                                                              monkeypatch):
    fs, bucket, keys = faulty_s3
    monkeypatch.setenv("MEMPIPE_IO_ATTEMPTS", "2")
    with FaultProxy(s3_server["AWS_ENDPOINT_URL"]) as proxy:
        proxy.fail_always.add("/in/00003.tar")
        argv = ["protect", f"s3://{bucket}/in", f"s3://{bucket}/out", "--no-ray", "--method", "random",
                "--storage-options", _options(proxy, attempts=2)]
        assert main(argv + ["--quiet"]) == 3
        err = capsys.readouterr().err
        assert "shard 00003 failed (read)" in err and "run the same command again" in err
        assert not fs.exists(f"{bucket}/out/00003_stats.json") and fs.exists(f"{bucket}/out/00004_stats.json")
        record = json.loads(fs.cat_file(f"{bucket}/out/mempipe_run.json"))
        assert [f["shard"] for f in record["shards_failed"]] == ["00003"]
        proxy.fail_always.clear()  # the outage ends
        assert main(argv + ["--quiet"]) == 0
    protected, failed = s3_keys(fs, f"{bucket}/out")
    assert sorted(protected) == sorted(keys) and not failed
    assert json.loads(fs.cat_file(f"{bucket}/out/mempipe_run.json"))["shards_written"] == 1


# ------------------------------------------------------------------ hostile shards

def _gnu_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data))


def _member(name: str, data: bytes, kind=tarfile.REGTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data)
    return info, data


def hostile_input(root: Path) -> Path:
    """Two good shards around five hostile ones."""
    inp = root / "in"
    write_split(str(inp), 8, 32, seed=4, first_index=0, per_shard=4)  # 00000, 00001
    flat = io.BytesIO()
    Image.new("RGB", (3000, 3000), (120, 10, 200)).save(flat, format="PNG")  # 9 Mpx in ~30 kB
    make_tar(inp / "00002.tar", sample_members("huge", img=os.urandom(300_000)) + sample_members("fine2"))
    _gnu_tar(inp / "00003.tar", [_member("sparse.png", b"", tarfile.GNUTYPE_SPARSE), _member("sparse.txt", b"cap"),
                                 _member("link.png", b"", tarfile.SYMTYPE)]
             + [_member(n, d) for n, d in sample_members("fine3")])
    plain = io.BytesIO()
    make_tar(plain, sample_members("zipped"))
    (inp / "00004.tar").write_bytes(gzip.compress(plain.getvalue()))
    make_tar(inp / "00005.tar", sample_members("bomb1", img=flat.getvalue()) + sample_members("bomb2", img=flat.getvalue())
             + sample_members("fine5"))
    whole = io.BytesIO()
    make_tar(whole, sample_members("t1") + sample_members("t2") + sample_members("t3"))
    (inp / "00006.tar").write_bytes(whole.getvalue()[:7000])  # cut inside t2's image
    return inp


HOSTILE_LIMITS = ["--max-member-mb", "0.2", "--max-shard-megapixels", "12"]


def _failures(out: Path) -> dict[str, str]:
    return {r["key"]: r["error_message"] for p in sorted(out.glob("*.parquet"))
            for r in pq.read_table(p).to_pylist() if r["status"] != "success"}


def _assert_hostile_reasons(out: Path, good_shards: int = 2) -> None:
    failed = _failures(out)
    assert "member too large" in failed["huge"]
    assert "sparse tar member" in failed["sparse"] and "non-regular tar member" in failed["link"]
    assert "gzip-compressed" in failed["00004/<unreadable>"]
    assert "pixel budget" in failed["bomb2"] and "bomb1" not in failed   # 9 + 9 Mpx > 12 Mpx
    assert "truncated shard after" in failed["t2"]
    protected = {s.key for p in sorted(out.glob("*.tar")) for s in iter_shard(str(p))}
    assert {"fine2", "fine3", "fine5", "bomb1", "t1"} <= protected and len(protected) == 5 + 4 * good_shards


def test_hostile_shards_are_recorded_with_their_reasons_and_the_rest_completes(tmp_path):
    inp = hostile_input(tmp_path)
    out = tmp_path / "out"
    assert main(["protect", str(inp), str(out), "--no-ray", "--method", "random", "--quiet", *HOSTILE_LIMITS]) == 0
    _assert_hostile_reasons(out)
    assert len(list(out.glob("*_stats.json"))) == 7


def test_on_ray_a_shard_that_kills_its_worker_is_quarantined_and_the_run_goes_on(tmp_path):
    """A fresh Ray (so the fault-injection variable reaches its workers): the worker dies on 00001."""
    inp = hostile_input(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "MEMPIPE_FAULT_KILL_SHARD": "00001"}
    cmd = [sys.executable, "-m", "mempipe.cli", "protect", str(inp), str(out), "--method", "random", "--num-actors", "2",
           "--quiet", *HOSTILE_LIMITS]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "shard 00001 failed (protect): quarantined" in done.stderr
    assert not (out / "00001_stats.json").exists()
    _assert_hostile_reasons(out, good_shards=1)
    assert len(list(out.glob("*_stats.json"))) == 6
    rerun = subprocess.run([c for c in cmd if c not in ("--num-actors", "2")] + ["--no-ray"], env=dict(os.environ),
                           capture_output=True, text=True, timeout=600)   # the quarantined shard, in this process
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / "00001_stats.json").exists()


# ------------------------------------------------------------------ one run at a time

def test_a_second_run_on_a_held_output_is_refused(tmp_path):
    inp = tmp_path / "in"
    write_split(str(inp), 120, 32, seed=2, first_index=0, per_shard=20)
    config = write_fast_config(tmp_path, train_steps=4, batch_size=32)
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "mempipe.cli", "protect", str(inp), str(out), "--no-ray", "--config",
                              config, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / LOCK_FILE).exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert (out / LOCK_FILE).exists()
    second = subprocess.run([sys.executable, "-m", "mempipe.cli", "protect", str(inp), str(out), "--no-ray", "--method",
                             "random", "--quiet"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "another run holds" in second.stderr and "--break-lock" in second.stderr
    assert first.wait(timeout=600) == 0
    assert not (out / LOCK_FILE).exists()
    run_ids = {json.loads(p.read_text())["run_id"] for p in out.glob("*_stats.json")}
    assert len(run_ids) == 1  # every shard from the one run that held the output


def test_stale_locks_taken_over_on_this_host_broken_on_request_elsewhere(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (out / LOCK_FILE).write_text(json.dumps({"run_id": "old", "host": socket.gethostname(), "pid": int(dead.stdout)}))
    with OutputLock(str(out), "new").acquire():
        assert json.loads((out / LOCK_FILE).read_text())["run_id"] == "new"
    (out / LOCK_FILE).write_text(json.dumps({"run_id": "far", "host": "another-node", "pid": 1}))
    with pytest.raises(OutputLocked, match="another-node"):
        OutputLock(str(out), "new").acquire()
    with OutputLock(str(out), "new").acquire(break_lock=True):
        assert json.loads((out / LOCK_FILE).read_text())["run_id"] == "new"
    assert not (out / LOCK_FILE).exists()


def test_the_s3_lock_is_a_conditional_put_decided_by_the_server(s3_bucket, monkeypatch):
    """Two runs race: the second looks before the first one's lock has landed (every existence check
    says no), then writes. Only a PUT that the server refuses when the object exists keeps it out;
    a check-then-write lock would let both runs in."""
    url = f"s3://{s3_bucket}/out"
    holder = OutputLock(url, "first").acquire()
    second = OutputLock(url, "second")
    monkeypatch.setattr(type(second.fs), "exists", lambda self, path, **kwargs: False)
    with pytest.raises(OutputLocked, match="first"):
        second.acquire()
    monkeypatch.undo()
    assert holder.holder()["run_id"] == "first"   # the first run's lock is untouched
    holder.release()
    OutputLock(url, "second").acquire().release()


# ------------------------------------------------------------------ secrets and the import path

def test_no_secret_in_rays_session_files_or_the_records_and_workers_import_the_installed_package(
        s3_server, s3_bucket, tmp_path):
    """A fresh local Ray started from a folder holding a folder named ``mempipe`` (the parent of a clone)."""
    import s3fs

    secret = "FAKE-SECRET-9f3c2a7e41"
    write_split(str(tmp_path / "local"), 8, 32, seed=6, first_index=0, per_shard=4)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["AWS_ENDPOINT_URL"]})
    for path in sorted((tmp_path / "local").glob("*.tar")):
        fs.put_file(str(path), f"{s3_bucket}/in/{path.name}")
    cwd = tmp_path / "parent"
    (cwd / "mempipe").mkdir(parents=True)  # a namespace package in the current folder
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": secret, "RAY_TMPDIR": str(ray_tmp)}
    options = json.dumps({"secret": secret, "key": "testing-key-id",
                          "client_kwargs": {"endpoint_url": s3_server["AWS_ENDPOINT_URL"]}})
    console_script = os.path.join(os.path.dirname(sys.executable), "mempipe")  # as a user runs it
    done = subprocess.run([console_script, "protect", f"s3://{s3_bucket}/in",
                           f"s3://{s3_bucket}/out", "--method", "random", "--num-actors", "1", "--verbose",
                           "--storage-options", options, "--record", str(tmp_path / "record")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(fs.ls(f"{s3_bucket}/out")) >= 7
    sessions = list(ray_tmp.rglob("session_*"))
    files = [p for p in ray_tmp.rglob("*") if p.is_file()] + [p for p in (tmp_path / "record").rglob("*") if p.is_file()]
    assert sessions and len(files) > 20
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert leaks == []
    assert secret not in done.stdout + done.stderr
    for path in fs.find(f"{s3_bucket}/out"):
        assert secret.encode() not in fs.cat_file(path)
    shutil.rmtree(ray_tmp, ignore_errors=True)


# ------------------------------------------------------------------ image depth and orientation

def test_16_bit_png_is_scaled_not_clipped_and_exif_orientation_is_applied(tmp_path):
    ramp = (np.tile(np.arange(64, dtype=np.uint32), (48, 1)) * 1000).astype(np.uint16)  # 0 .. 63,000
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    pixels, mode = decode_rgb(buf.getvalue())
    assert mode.startswith("I") and (pixels == 255).mean() < 0.05 and abs(pixels[0, 40, 0] - 40000 / 257) <= 1
    wide = Image.new("RGB", (60, 20), (200, 30, 30))
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = io.BytesIO()
    wide.save(rotated, format="JPEG", exif=exif)
    assert decode_rgb(rotated.getvalue())[0].shape == (60, 20, 3)
    inp = tmp_path / "in"
    inp.mkdir()
    make_tar(inp / "00000.tar", sample_members("deep", img=buf.getvalue())
             + sample_members("turned", img=rotated.getvalue(), ext="jpg"))
    assert main(["protect", str(inp), str(tmp_path / "out"), "--no-ray", "--method", "random", "--quiet"]) == 0
    out = {s.key: decode_rgb(s.image)[0] for s in iter_shard(str(tmp_path / "out/00000.tar"))}
    assert out["turned"].shape == (60, 20, 3)
    assert np.abs(out["deep"].astype(int) - pixels.astype(int)).max() <= 8


def test_the_fits_storage_failure_is_one_line_and_exit_3_and_a_rerun_uploads_without_fitting_again(
        demo_small, tmp_path, monkeypatch, capsys):
    from mempipe.io.retry import StorageError
    from mempipe.run import fit as fit_module

    monkeypatch.setenv("MEMPIPE_CACHE", str(tmp_path / "cache"))
    argv = ["protect", str(demo_small / "train"), str(tmp_path / "out"), "--no-ray", "--quiet", "--outer-iters", "1",
            "--train-steps", "2", "--pgd-steps", "1", "--unit-size", "64"]

    def broken_upload(*args, **kwargs):
        raise StorageError("write surrogate.pt failed after 4 attempts: EndpointConnectionError: could not connect")

    monkeypatch.setattr(fit_module, "save_fit", broken_upload)
    started = time.perf_counter()
    assert main(argv) == 3
    failed_run_s = time.perf_counter() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "storage failure: write surrogate.pt failed after 4 attempts" in err[0]
    assert len(list((tmp_path / "cache" / "fits").glob("*.pt"))) == 1      # the fit waits for its upload
    monkeypatch.undo()
    monkeypatch.setenv("MEMPIPE_CACHE", str(tmp_path / "cache"))
    fits = []
    real_fit = fit_module.fit
    monkeypatch.setattr(fit_module, "fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    started = time.perf_counter()
    assert main(argv) == 0
    rerun_s = time.perf_counter() - started
    assert fits == []                                                        # uploaded, not trained again
    assert not list((tmp_path / "cache" / "fits").glob("*.pt"))              # and the local copy is gone
    from tests.helpers import private_run

    record = private_run(tmp_path / "out")
    assert record["samples_protected"] == 300 and record["fit"]["loaded_from_local_cache"]
    print(f"failed run (fit, then the upload fails) {failed_run_s:.1f} s; rerun (upload, then protect) {rerun_s:.1f} s, "
          f"its fit phase {record['fit']['seconds']} s as first fitted")


def test_on_ray_the_fits_storage_failure_is_one_line_and_exit_3(s3_server, s3_bucket, tmp_path):
    """The record's surrogate cannot be read back (a resumed run through an outage): one line, exit 3."""
    import s3fs

    write_split(str(tmp_path / "local"), 40, 32, seed=6, first_index=0, per_shard=20)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["AWS_ENDPOINT_URL"]})
    for path in sorted((tmp_path / "local").iterdir()):
        fs.put_file(str(path), f"{s3_bucket}/in/{path.name}")
    env = {**os.environ, "MEMPIPE_IO_MAX_WAIT": "0.2", "MEMPIPE_IO_ATTEMPTS": "2"}
    with FaultProxy(s3_server["AWS_ENDPOINT_URL"]) as proxy:
        cmd = [sys.executable, "-m", "mempipe.cli", "protect", f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out",
               "--outer-iters", "1", "--train-steps", "2", "--pgd-steps", "1", "--hotflip-iters", "1", "--candidates",
               "2", "--unit-size", "20", "--quiet", "--storage-options", _options(proxy, 2)]
        # the first run writes the record in this process; the resumed one runs its fit on Ray
        assert subprocess.run(cmd + ["--no-ray"], env=env, capture_output=True, text=True, timeout=600).returncode == 0
        fs.invalidate_cache()
        for path in fs.ls(f"{s3_bucket}/out"):
            if "00001" in path:
                fs.rm(path)
        proxy.fail_always.add("surrogate.pt")
        done = subprocess.run(cmd + ["--num-actors", "1"], env=env, capture_output=True, text=True, timeout=600)
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 3
    assert len(err) == 1 and err[0].startswith("mempipe: storage failure: read surrogate.pt failed after 2 attempts")


def test_a_resumed_run_loads_the_very_surrogate_the_first_run_used(tmp_path):
    """The record stores a trained surrogate in half precision, and the first run uses it rounded the
    same way: what a resume loads equals, weight for weight, what the first run protected with."""
    import torch

    from mempipe.engine import MEMConfig
    from mempipe.engine.surrogate import build_model
    from mempipe.run.fit import FitState, load_fit, round_to_stored, save_fit

    cfg = MEMConfig(arch="tiny-vit", image_size=32, context_length=16)
    trained = build_model(cfg.arch, cfg.image_size, cfg.context_length, seed=3)
    state = FitState({}, "hash", surrogate=round_to_stored(trained))
    save_fit(str(tmp_path / "record"), state, "run-1", None)
    loaded = load_fit(str(tmp_path / "record"), cfg, None).surrogate.clip.state_dict()
    used = trained.clip.state_dict()
    assert all(torch.equal(loaded[k], used[k]) for k in used)
    stored = torch.load(tmp_path / "record" / "surrogate.pt", weights_only=True)["state_dict"]
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
