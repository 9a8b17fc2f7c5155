"""Helpers for tests and benchmarks that run the real parts on loopback."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

import yaml

from .fault_proxy import FaultProxy

__all__ = ["FAST_ENGINE", "FaultProxy", "fast_config", "free_port", "moto_s3"]

# engine settings that run the full min-min loop in seconds on a CPU: 2 rounds, a few steps of each
FAST_ENGINE = {"outer_iters": 2, "train_steps": 6, "pgd_steps": 2, "hotflip_iters": 1, "candidates": 4,
               "batch_size": 64}


def fast_config(folder, **overrides) -> str:
    """``folder/fast.yaml`` holding FAST_ENGINE with ``overrides``; returns its path (for ``--config``)."""
    path = Path(folder) / "fast.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**FAST_ENGINE, **overrides}))
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(key_id: str = "testing-key-id", secret: str = "testing-secret-value") -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port, its endpoint and keys in the environment while it runs
    (s3fs and boto3 find them there); yields that environment."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": key_id,
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
