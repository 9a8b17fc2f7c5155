"""One run at a time on an output: a lock object at the output root.

Two runs writing one output would interleave shards of two configurations (a tar of one run
beside the parquet of the other). The lock is created atomically (``O_EXCL`` on a local disk, a
conditional PUT with ``If-None-Match: *`` on S3), names its holder, and is removed when the run
ends. A run killed hard leaves it behind: on the same host a lock whose process is gone is taken
over; elsewhere ``--break-lock`` removes it, once you know its holder is gone.
"""
from __future__ import annotations

import json
import os
import socket
import time

from .storage import create_exclusive, filesystem, join, read_bytes

LOCK_FILE = "mempipe.lock"


class OutputLocked(ValueError):
    """Another run holds the output."""


class OutputLock:
    def __init__(self, output_url: str, run_id: str, storage_options: dict | None = None) -> None:
        self.fs, prefix = filesystem(output_url, storage_options)
        self.path = join(prefix, LOCK_FILE)
        self.output_url, self.run_id = output_url, run_id
        self.held = False

    def holder(self) -> dict:
        try:
            return json.loads(read_bytes(self.fs, self.path))
        except (FileNotFoundError, ValueError):
            return {}

    def stale(self, who: dict) -> bool:
        """A holder on this host whose process is gone (a run killed hard) holds nothing."""
        if who.get("host") != socket.gethostname() or not isinstance(who.get("pid"), int):
            return False
        try:
            os.kill(who["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def acquire(self, break_lock: bool = False) -> "OutputLock":
        if self.fs.exists(self.path) and (break_lock or self.stale(self.holder())):
            self.fs.rm_file(self.path)
        body = json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
        if not create_exclusive(self.fs, self.path, body):
            who = self.holder()
            raise OutputLocked(
                f"another run holds {self.output_url} (run {who.get('run_id', '?')} on {who.get('host', '?')}, "
                f"pid {who.get('pid', '?')}, since {who.get('started', '?')}). Wait for it to finish; if it is gone "
                f"(killed, crashed), rerun with --break-lock")
        self.held = True
        return self

    def release(self) -> None:
        if self.held and self.holder().get("run_id") == self.run_id:
            self.fs.rm_file(self.path)
        self.held = False

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
