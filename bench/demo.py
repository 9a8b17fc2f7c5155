"""`make demo` from a fresh clone: the install, then every step of the demo timed, and its table.

Clones the repository's HEAD into a temporary folder, runs the install (`make .venv/.installed`),
then the commands `make -n demo` prints, one at a time (so each step's time is its own), and
reads the three-row table the demo printed (its compare.json). Writes bench/results/demo.json.

    python bench/demo.py [--venv PATH]    # --venv: reuse an installed environment (skips the install)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from mempipe_research.results import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(command: str, cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command!r} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - started, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", help="an installed environment to link instead of installing")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo.json"))
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="mempipe-fresh-") as tmp:
        clone = Path(tmp) / "mempipe"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        if args.venv:
            os.symlink(os.path.abspath(args.venv), clone / ".venv")
            (clone / ".venv" / ".installed").touch()
            install_s = None
        else:
            install_s, _ = run("make .venv/.installed", clone)
        recipe = subprocess.run(["make", "-n", "demo"], cwd=clone, capture_output=True, text=True, check=True).stdout
        commands = [line for line in recipe.replace("\\\n", " ").splitlines()
                    if line.strip() and not line.startswith(("make", "test -x", "touch"))]
        steps = []
        for command in commands:
            seconds, out = run(command, clone)
            words = shlex.split(command)
            name = next((w for w in words[1:] if not w.startswith("-")), words[0]) if words[0].endswith("mempipe") \
                else words[0]
            steps.append({"step": f"mempipe {name}" if words[0].endswith("mempipe") else name,
                          "seconds": round(seconds, 1)})
            print(f"{steps[-1]['step']}: {seconds:.1f} s", flush=True)
        effect = json.loads((clone / "demo_out" / "effect" / "compare.json").read_text())
    demo_s = sum(s["seconds"] for s in steps)
    body = {"what": "make demo from a fresh clone of HEAD: the install, then each step of its recipe timed",
            "command": "python bench/demo.py " + " ".join(sys.argv[1:]), "commit": commit,
            "cores": os.cpu_count(), "install_s": None if install_s is None else round(install_s, 1),
            "demo_after_install_s": round(demo_s, 1), "steps": steps,
            "table": {name: {"gain_R@10": row["gain_R@10"]["clean"], "share_of_clean": row["share_of_clean"]}
                      for name, row in effect["rows"].items()},
            "victim": {k: effect["victim"][k] for k in ("arch", "image_size", "epochs", "lr")}}
    write_result(Path(args.out), body)
    print(json.dumps(body, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
