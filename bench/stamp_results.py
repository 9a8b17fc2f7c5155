"""Give every result file its provenance and relative paths (idempotent): files written before results
carried their provenance are marked as such, with the last commit that changed them.

    python bench/stamp_results.py [FILES...]     # default: every JSON under bench/results
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mempipe_research.results import ROOT, relative


def last_change(path: Path) -> str:
    out = subprocess.run(["git", "log", "-1", "--format=%H", "--", str(path)], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "uncommitted"


def stamp(path: Path) -> bool:
    body = json.loads(path.read_text())
    if not isinstance(body, dict):
        return False
    meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
    if "provenance" not in body:
        own_commit = body.get("commit") or meta.get("commit")
        own_command = body.get("command") or meta.get("command")
        body["provenance"] = {
            "commit": own_commit or last_change(path), "command": own_command,
            "older_version": None if (own_commit and own_command) else
            "written before result files carried their commit and command line: "
            + ("the commit is the one the file records" if own_commit else "the commit is the last that changed the file")
            + ("" if own_command else "; the command line was not recorded")}
    new = relative(body)
    text = json.dumps(new, indent=1)
    if text != path.read_text():
        path.write_text(text)
        return True
    return False


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted((ROOT / "bench" / "results").rglob("*.json"))
    changed = [f for f in files if stamp(f)]
    print(f"{len(changed)} of {len(files)} result files stamped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
