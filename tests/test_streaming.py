"""The streaming cluster partition: fit once (saved before any shard), protect window by window,
resume and incremental runs against the same fitted state, changed settings refused."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pyarrow.parquet as pq
import pytest

from mempipe.cli import main
from mempipe.data.demo_data import write_split
from mempipe.io.shards import done_shards, iter_shard

from mempipe_research.testing import fast_config as write_fast_config

from helpers import private_meta

FIT_FILES = ("fit.json", "features.pt", "surrogate.pt")


def keys(out):
    protected = [s.key for t in sorted(out.glob("*.tar")) for s in iter_shard(str(t))]
    failed = [r["key"] for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()
              if r["status"] != "success"]
    return protected, failed


def fit_bytes(record) -> dict[str, str]:
    return {name: hashlib.sha256((record / name).read_bytes()).hexdigest() for name in FIT_FILES}


@pytest.fixture
def fast_config(tmp_path):
    return write_fast_config(tmp_path, batch_size=32, clusters=3)


def _check_triggers_follow_the_fit(out, record):
    """Every protected sample carries its fitted cluster's trigger, in every shard, from every run."""
    fit = json.loads((record / "fit.json").read_text())
    private = private_meta(out)
    assert private and len(fit["centroids"]) == 3
    for (shard, key), meta in private.items():
        assert meta["trigger"] == fit["trigger_text"][f"cluster:{meta['cluster']}"], (shard, key)


def test_kill_the_driver_mid_run_then_resume_against_the_same_fit(tmp_path, fast_config):
    inp, out, record = tmp_path / "in", tmp_path / "out", tmp_path / "out_mempipe_record"
    write_split(str(inp), 200, 64, seed=2, first_index=0, per_shard=40)
    cmd = [sys.executable, "-m", "mempipe.cli", "protect", str(inp), str(out), "--config", fast_config,
           "--partition", "cluster", "--trigger-scope", "cluster", "--window", "1", "--num-actors", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("*_stats.json")) and proc.poll() is None:
        time.sleep(0.1)
    first_stats = min((p.stat().st_mtime_ns for p in out.glob("*_stats.json")), default=None)
    run_processes = psutil.Process(proc.pid).children(recursive=True)   # Ray's daemons and workers
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first_stats is not None
    # the fit landed in the record before the first protected shard
    assert all((record / name).stat().st_mtime_ns < first_stats for name in FIT_FILES)
    # killing the session stops the whole run (a worker may outlive its driver for a moment and finish
    # its shard): done shards are counted once every process of the run is gone, not after a guess
    _, alive = psutil.wait_procs(run_processes, timeout=60)
    assert alive == [], f"the killed run's processes live on: {[p.name() for p in alive]}"
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_stats.json")}
    assert 1 <= len(done_before) < 5
    fitted = fit_bytes(record)

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert fit_bytes(record) == fitted   # loaded, not fitted again
    assert {n: (out / n).stat().st_mtime_ns for n in done_before} == done_before   # done shards not redone
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["shards_written"] == 5 - len(done_before)
    protected, failed = keys(out)
    inputs = [s.key for t in sorted(inp.glob("*.tar")) for s in iter_shard(str(t))]
    assert sorted(protected) == sorted(inputs) and not failed   # every key exactly once
    _check_triggers_follow_the_fit(out, record)


def test_a_cluster_larger_than_a_unit_is_cut_into_units_that_share_its_trigger(tmp_path, fast_config):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_split(str(inp), 120, 64, seed=3, first_index=0, per_shard=60)
    assert main(["protect", str(inp), str(out), "--no-ray", "--config", fast_config, "--partition", "cluster",
                 "--trigger-scope", "cluster", "--unit-size", "25", "--quiet"]) == 0
    _check_triggers_follow_the_fit(out, tmp_path / "out_mempipe_record")
    private = private_meta(out)
    by_cluster: dict[int, set[str]] = {}
    for meta in private.values():
        by_cluster.setdefault(meta["cluster"], set()).add(meta["unit"])
    record = json.loads((tmp_path / "out_mempipe_record" / "run.json").read_text())
    assert all(u["samples"] <= 25 for u in record["units"])
    assert max(len(units) for units in by_cluster.values()) >= 2   # a big cluster spans several units


def test_changed_settings_are_refused_and_new_run_starts_a_new_version(tmp_path, fast_config, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_split(str(inp), 60, 64, seed=4, first_index=0, per_shard=30)
    base = ["protect", str(inp), str(out), "--no-ray", "--config", fast_config, "--partition", "cluster", "--quiet"]
    assert main(base) == 0
    (out / "00001_stats.json").unlink()   # a shard left to do
    assert main(base + ["--epsilon", "4"]) == 2
    err = capsys.readouterr().err
    assert "epsilon: 8 -> 4" in err and "--new-run" in err
    assert not (out / "00001_stats.json").exists()
    assert main(base + ["--epsilon", "4", "--new-run"]) == 0
    assert len(list((tmp_path / "out.v2").glob("*_stats.json"))) == 2
    assert json.loads((tmp_path / "out.v2_mempipe_record" / "fit.json").read_text())["settings"]["engine"]["epsilon"] == 4
    assert main(base) == 0   # the original settings finish the original output
    assert (out / "00001_stats.json").exists()


def test_done_shards_come_from_one_listing_of_an_s3_prefix(s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    for i in range(1200):   # more than one listing page (1,000 keys)
        fs.pipe_file(f"{s3_bucket}/out/{i:05d}_stats.json" if i % 3 else f"{s3_bucket}/out/{i:05d}.tar", b"{}")
    done = done_shards(f"s3://{s3_bucket}/out")
    assert len(done) == 800 and "00001" in done and "00000" not in done
