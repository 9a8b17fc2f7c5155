"""Shared fixtures: demo shards, a real S3 endpoint on loopback (moto's server), an HTTP server."""
from __future__ import annotations

import functools
import http.server
import os
import socket
import threading

import pytest

from mempipe.data.demo_data import write_demo_data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    """300 train / 60 test demo samples (64 px), written once for the whole session."""
    root = tmp_path_factory.mktemp("demo")
    write_demo_data(str(root), train=300, test=60, size=64, seed=3)
    return root


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free loopback port; s3fs talks to it over HTTP."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing-key-id",
           "AWS_SECRET_ACCESS_KEY": "testing-secret-value", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


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
