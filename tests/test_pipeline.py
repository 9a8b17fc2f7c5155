"""The pipeline end to end: clusters and a shared trigger with a faulty shard, S3 to S3, unit packing
(on Ray: tests/test_driver.py, test_streaming.py, test_reliability.py, test_operations.py)."""
import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from mempipe.cli import main
from mempipe.io.shards import iter_shard

from mempipe_research.testing import fast_config as write_fast_config

from helpers import image_bytes, make_tar, private_meta, private_run, sample_members



def keys_in(out):
    """(protected keys, failed keys) over every output shard."""
    protected, failed = [], []
    for tar in sorted(out.glob("*.tar")):
        protected += [s.key for s in iter_shard(str(tar))]
    for parquet in sorted(out.glob("*.parquet")):
        failed += [r["key"] for r in pq.read_table(parquet).to_pylist() if r["status"] != "success"]
    return protected, failed


def input_keys(inp):
    return [s.key for tar in sorted(inp.glob("*.tar")) for s in iter_shard(str(tar))]


@pytest.fixture
def fast_config(tmp_path):
    return write_fast_config(tmp_path, clusters=4)


def test_cluster_partition_with_global_trigger_and_a_faulty_shard(demo_small, tmp_path, fast_config, capsys):
    inp = tmp_path / "in"
    shutil.copytree(demo_small / "train", inp)
    truncated_jpeg = image_bytes(fmt="JPEG", size=(40, 40))[:300]
    make_tar(inp / "00001.tar", sample_members("trunc", img=truncated_jpeg, ext="jpg")
             + [("nocap.png", image_bytes())] + sample_members("badjson")[:2] + [("badjson.json", b"{oops")])
    out = tmp_path / "out"
    assert main(["protect", str(inp), str(out), "--config", fast_config, "--partition", "cluster", "--no-ray",
                 "--trigger-scope", "global", "--quiet"]) == 0
    protected, failed = keys_in(out)
    assert sorted(protected + failed) == sorted(input_keys(inp))  # every key exactly once
    assert sorted(failed) == ["nocap", "trunc"] and "badjson" in protected
    private = private_meta(out)
    samples = [private[(tar.stem, s.key)] for tar in sorted(out.glob("*.tar")) for s in iter_shard(str(tar))]
    triggers = {m["trigger"] for m in samples}
    assert len(triggers) == 1  # one global trigger, fitted once for every window
    clusters = {m["cluster"] for m in samples}
    assert clusters <= {0, 1, 2, 3} and len(clusters) > 1
    assert all(m["max_delta"] <= 8 for m in samples)
    record = private_run(out)
    assert record["engine"] == "local" and record["trigger_text"]["global"] == triggers.pop()
    assert len(record["centroids"]) == 4 and record["samples_protected"] == len(protected)
    # a finished run, started again, does nothing and leaves the run records as they were
    before = (out / "mempipe_run.json").read_bytes()
    assert main(["protect", str(inp), str(out), "--config", fast_config, "--partition", "cluster", "--no-ray",
                 "--quiet"]) == 0
    assert (out / "mempipe_run.json").read_bytes() == before


def test_s3_to_s3(demo_small, s3_bucket, fast_config):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    for path in (demo_small / "test").iterdir():
        fs.put_file(str(path), f"{s3_bucket}/in/{path.name}")
    cmd = [sys.executable, "-m", "mempipe.cli", "protect", f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out",
           "--config", fast_config, "--no-ray", "--quiet"]   # the same driver as on Ray; Ray with S3: test_reliability
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=os.environ.copy())
    assert run.returncode == 0, run.stderr[-2000:]
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket}/out"))
    assert names == ["00000.parquet", "00000.tar", "00000_stats.json", "mempipe_run.json"]
    protected = list(iter_shard(f"s3://{s3_bucket}/out/00000.tar"))
    assert len(protected) == 60
    record = json.loads(fs.cat_file(f"{s3_bucket}/out/mempipe_run.json"))
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in json.dumps(record)
    private = sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{s3_bucket}/out_mempipe_record"))
    # samples/00000.parquet, the fit, the full run record and the run's shared surrogate (the default), all on S3
    assert private == ["00000.parquet", "fit.json", "run.json", "surrogate.pt"]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in fs.cat_file(f"{s3_bucket}/out_mempipe_record/run.json").decode()


def test_clusters_are_packed_into_bounded_units_and_a_large_one_is_cut():
    from mempipe.run.windows import pack_units

    sizes = {0: 900, 1: 700, 2: 400, 3: 300, 4: 2500}
    cluster_of = [c for c, n in sizes.items() for _ in range(n)]
    units = pack_units(cluster_of, 1000)
    assert sorted(i for u in units for i in u) == list(range(len(cluster_of)))  # every sample once
    assert all(len(u) <= 1000 for u in units)
    of_4 = [u for u in units if {cluster_of[i] for i in u} == {4}]
    assert len(of_4) == 3 and sorted(len(u) for u in of_4) == [833, 833, 834]   # balanced chunks of one cluster
    mixed = [sorted({cluster_of[i] for i in u}) for u in units if u not in of_4]
    assert sorted(mixed) == [[0], [1, 3], [2]]   # whole small clusters share units, first-fit decreasing


def test_a_fitted_clusters_pattern_is_one_across_units(demo_small, tmp_path):
    """--method pattern with --partition cluster: every sample of one fitted cluster carries the same
    block pattern, whichever unit it was protected in; other clusters carry others."""
    import numpy as np

    from mempipe.io.images import decode_rgb

    config = write_fast_config(tmp_path, clusters=3, unit_size=50)
    out = tmp_path / "out"
    assert main(["protect", str(demo_small / "train"), str(out), "--config", config, "--partition", "cluster",
                 "--no-ray", "--quiet", "--method", "pattern", "--noise-scope", "cluster",
                 "--image-format", "png"]) == 0
    original = {s.key: decode_rgb(s.image)[0].astype(np.int16)
                for tar in sorted((demo_small / "train").glob("*.tar")) for s in iter_shard(str(tar))}
    private = private_meta(out)
    by_cluster: dict[int, list] = {}
    for tar in sorted(out.glob("*.tar")):
        for s in iter_shard(str(tar)):
            delta = decode_rgb(s.image)[0].astype(np.int16) - original[s.key]
            inside = (original[s.key] >= 8) & (original[s.key] <= 247)   # where the pixel range cuts nothing
            by_cluster.setdefault(private[(tar.stem, s.key)]["cluster"], []).append((tar.stem, delta, inside))
    # units of at most 50 samples: a cluster of more than 50 was protected in several units
    assert len(by_cluster) > 1 and max(len(m) for m in by_cluster.values()) > 50
    assert len(private_run(out)["units"]) >= 300 // 50
    patterns = {}
    for cluster, members in by_cluster.items():
        _, first, first_inside = members[0]
        for _, delta, inside in members[1:]:
            both = first_inside & inside
            assert both.sum() > 1000 and np.array_equal(first[both], delta[both])
        assert set(np.unique(first[first_inside])) == {-8, 8}
        patterns[cluster] = np.where(first_inside, first, 0)
    assert len({p.tobytes() for p in patterns.values()}) == len(patterns)
