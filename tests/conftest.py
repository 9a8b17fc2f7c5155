"""Shared fixtures: demo shards, a fast engine config, a real S3 endpoint on loopback (moto's
server), an HTTP server. The helpers behind them live in ``mempipe_research.testing``, which the
benchmarks use too."""
from __future__ import annotations

import functools
import http.server
import threading

import pytest

from mempipe.data.demo_data import write_demo_data
from mempipe_research.testing import fast_config as write_fast_config
from mempipe_research.testing import moto_s3


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    """300 train / 60 test demo samples (64 px), written once for the whole session."""
    root = tmp_path_factory.mktemp("demo")
    write_demo_data(str(root), train=300, test=60, size=64, seed=3)
    return root


@pytest.fixture
def fast_config(tmp_path):
    """A fast engine config file (``--config``): the full min-min loop in seconds."""
    return write_fast_config(tmp_path)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free loopback port; s3fs talks to it over HTTP."""
    with moto_s3() as env:
        yield env


@pytest.fixture
def s3_bucket(s3_server, request):
    import boto3

    name = "bucket-" + request.node.name.lower().replace("_", "-")[:40]
    boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return name


@pytest.fixture
def http_folder(tmp_path):
    """Serve a folder over HTTP on loopback; yields (folder, base_url)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
