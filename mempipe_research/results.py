"""The provenance every benchmark result file carries: the commit and the command line that wrote
it, and only paths relative to the repository (a result must not name the machine that wrote it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ABSOLUTE_PREFIXES = ("/tmp/", "/work/", "/root/", "/home/", "/var/", "/private/")


def commit(root: Path = ROOT) -> str:
    """HEAD, with ``-dirty`` when tracked files differ from it (the result is then not reproducible from it)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)

    head = git("rev-parse", "HEAD").stdout.strip() or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head + ("-dirty" if dirty else "")


def command_line(argv: list[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = relative_path(argv[0])
    return " ".join(["python", *argv])


def relative_path(text: str, root: Path = ROOT) -> str:
    """A path under the repository as relative to it; another absolute path as its last two parts."""
    if not isinstance(text, str) or not text.startswith("/"):
        return text
    inside = Path(os.path.abspath(text)).is_relative_to(os.path.abspath(root))   # bench/work may be a link
    return os.path.relpath(text, root) if inside else "<elsewhere>/" + "/".join(Path(text).parts[-2:])


def relative(value: Any, root: Path = ROOT) -> Any:
    """``value`` with every absolute path string (at any depth) made relative."""
    if isinstance(value, dict):
        return {k: relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [relative(v, root) for v in value]
    # The repository itself may live anywhere (a CI checkout is not under a usual prefix).
    if isinstance(value, str) and value.startswith((*ABSOLUTE_PREFIXES, os.path.abspath(root) + "/")):
        if "::" in value:   # open_clip_train's multi-shard spec
            return "::".join(relative_path(part, root) for part in value.split("::"))
        return relative_path(value, root)
    return value


def provenance(argv: list[str] | None = None) -> dict[str, str]:
    return {"commit": commit(), "command": command_line(argv), "written": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_result(path, body: dict, argv: list[str] | None = None) -> None:
    """Write a result file: ``body`` with its provenance, every path relative."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(relative({**body, "provenance": provenance(argv)}), indent=1, default=str))
