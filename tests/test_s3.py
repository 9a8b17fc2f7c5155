import json

import s3fs

from mempipe.cli import main
from mempipe.io.shards import ShardOutput, iter_shard, list_shards, shard_done, write_shard

from helpers import image_bytes


def test_shard_round_trip_through_s3(s3_bucket):
    out = f"s3://{s3_bucket}/shards"
    samples = [ShardOutput(f"k{i}", image_bytes(seed=i), "png", f"cap {i}", {"i": i}) for i in range(4)]
    write_shard(out, "00000", samples)
    write_shard(out, "00001", samples[:2])
    urls = list_shards(out)
    assert [u.rsplit("/", 1)[-1] for u in urls] == ["00000.tar", "00001.tar"] and urls[0].startswith("s3://")
    back = list(iter_shard(urls[0]))
    assert [s.key for s in back] == ["k0", "k1", "k2", "k3"] and back[2].caption == "cap 2" and back[2].meta == {"i": 2}
    assert back[3].image == image_bytes(seed=3)
    assert shard_done(out, "00001")
    assert len(list_shards(f"s3://{s3_bucket}/shards/{{00000..00001}}.tar")) == 2
    # the bytes really are in the S3 server, seen by an independent client
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": __import__("os").environ["AWS_ENDPOINT_URL"]})
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket}/shards")) == [
        "00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar", "00001_stats.json"]


def test_demo_data_to_s3_and_explicit_storage_options(s3_bucket, s3_server):
    opts = json.dumps({"key": s3_server["AWS_ACCESS_KEY_ID"], "secret": s3_server["AWS_SECRET_ACCESS_KEY"],
                       "client_kwargs": {"endpoint_url": s3_server["AWS_ENDPOINT_URL"]}})
    assert main(["demo-data", f"s3://{s3_bucket}/demo", "--train", "20", "--test", "5", "--storage-options", opts]) == 0
    assert len(list(iter_shard(f"s3://{s3_bucket}/demo/train/00000.tar"))) == 20
