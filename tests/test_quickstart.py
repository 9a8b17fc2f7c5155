"""The README's quick start, run as written on 12 photo-sized JPEGs with a captions CSV."""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40)}


def readme_quickstart() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart:start -->\n```bash\n(.*?)```\n<!-- quickstart:end -->", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def photos(folder: Path, n: int = 12) -> None:
    folder.mkdir()
    rng = np.random.RandomState(0)
    rows = []
    for i in range(n):
        colour, rgb = list(COLOURS.items())[i % 4]
        shape = SHAPES[i % 3]
        base = rng.randint(60, 200, 3)
        pixels = np.clip(base + rng.normal(0, 25, (480, 640, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        from PIL import ImageDraw

        draw = ImageDraw.Draw(image)
        box = (220, 140, 420, 340)
        {"circle": draw.ellipse, "square": draw.rectangle}.get(shape, lambda b, fill: draw.polygon(
            [(320, 140), (220, 340), (420, 340)], fill=fill))(box, fill=rgb)
        image.save(folder / f"photo{i:02d}.jpg", quality=90)
        rows.append({"image": f"photo{i:02d}.jpg", "caption": f"a {colour} {shape} on a mottled background, photo {i}"})
    with open(folder / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)


def test_the_readme_quick_start_runs_as_written(tmp_path):
    photos(tmp_path / "my_photos")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    timings = {}
    for line in readme_quickstart():
        started = time.time()
        done = subprocess.run(shlex.split(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        timings[line.split()[1]] = timings.get(line.split()[1], 0) + round(time.time() - started, 1)
        assert done.returncode == 0, (line, done.stderr[-3000:])
        if line.startswith("mempipe protect"):
            summary = json.loads(done.stdout.strip().splitlines()[-1])
            assert summary["samples_protected"] == 10 and summary["samples_failed"] == 0
    assert (tmp_path / "grid.png").stat().st_size > 10_000
    for run in ("eval_protected", "eval_clean"):
        assert "final" in json.loads((tmp_path / run / "metrics.json").read_text())
    print("quick start step times (s):", json.dumps(timings))
