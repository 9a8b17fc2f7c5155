"""A fault-injecting HTTP proxy in front of an S3 endpoint (moto's server), for tests and bench/faults.py.

On a seeded share of requests it answers in one of the ways a real object store or network
does on a bad day, instead of forwarding:

- ``reset``: the connection is reset before any answer;
- ``503``: ``503 SlowDown``, S3's throttling answer;
- ``stall``: nothing is sent for ``stall_seconds`` (past the client's read timeout), then reset;
- ``cut``: the upstream answer's headers and part of its body, then a reset (a body cut midway).

Independently, ``midstream_rate`` is the chance that a connection is reset during each 64 KB of a
body on its way, up (a PUT or a part) or down (a GET): the longer the transfer, the surer a reset,
as on a flaky link.

``fail_always`` names path fragments whose requests always fail (a shard that cannot be read).
Counts of forwarded requests, of each fault and of body bytes carried are kept for the report.
"""
from __future__ import annotations

import http.client
import http.server
import random
import socket
import struct
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

FAULTS = ("reset", "503", "stall", "cut")
CHUNK = 64 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class _MidstreamReset(Exception):
    """The proxy drops the connection partway through a request body."""


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.0, seed: int = 0, faults=FAULTS, stall_seconds: float = 3.0,
                 midstream_rate: float = 0.0):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.rate, self.faults, self.stall_seconds = rate, tuple(faults), stall_seconds
        self.midstream_rate = midstream_rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.fail_always: set[str] = set()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                return  # quiet: the counts are the report

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length, chunks = int(self.headers.get("Content-Length") or 0), []
                while length > 0:   # 64 KB at a time: a reset may come in mid-upload
                    chunk = self.rfile.read(min(CHUNK, length))
                    proxy.carried("up", len(chunk))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    length -= len(chunk)
                    if proxy.midstream("up"):
                        raise _MidstreamReset
                return b"".join(chunks)

            def _reset(self) -> None:
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    self.close_connection = True  # the client had gone already
                self.close_connection = True

            def _handle(self) -> None:
                try:
                    body = self._body()
                except _MidstreamReset:
                    return self._reset()
                fault = proxy.decide(self.path)
                if fault == "reset":
                    return self._reset()
                if fault == "stall":
                    time.sleep(proxy.stall_seconds)
                    return self._reset()
                if fault == "503":
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                               b"<Message>Please reduce your request rate.</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                self.send_response(answer.status, answer.reason)
                for k, v in answer.getheaders():
                    if k.lower() not in HOP_BY_HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)  # a HEAD answer's length is the object's, not its empty body's
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "cut" and self.command != "HEAD" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    return self._reset()
                if self.command != "HEAD":
                    for start in range(0, len(data), CHUNK):   # a reset may come in mid-download
                        self.wfile.write(data[start:start + CHUNK])
                        proxy.carried("down", len(data[start:start + CHUNK]))
                        if start + CHUNK < len(data) and proxy.midstream("down"):
                            self.wfile.flush()
                            return self._reset()

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (ConnectionError, OSError):
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def decide(self, path: str) -> str | None:
        with self.lock:
            self.counts["requests"] += 1
            if any(fragment in path for fragment in self.fail_always):
                self.counts["fault:always"] += 1
                return "reset"
            if self.rate and self.rng.random() < self.rate:
                fault = self.rng.choice(self.faults)
                self.counts[f"fault:{fault}"] += 1
                return fault
            return None

    def midstream(self, direction: str) -> bool:
        """Whether the connection is reset after this 64 KB of a body going ``direction``."""
        if not self.midstream_rate:
            return False
        with self.lock:
            if self.rng.random() < self.midstream_rate:
                self.counts[f"fault:midstream-{direction}"] += 1
                return True
        return False

    def carried(self, direction: str, n: int) -> None:
        with self.lock:
            self.counts[f"bytes_{direction}"] += n

    def faults_injected(self) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith("fault:"))

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
