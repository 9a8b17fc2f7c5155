"""How the benchmarks judge and merge result rows: each method against the control that makes its
kind of edit, distances to the goals, and result files of processes that ran side by side."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


GOAL_TIMES_CHANCE = 2.0   # the best method's R@10 at most 2x chance, both directions
CONTROL_SHARE_NEEDED = 0.70


def goal_rows(rows: list[dict], clean_final: list[float], chance: float, victim: str) -> list[dict]:
    """Each row's distance to the goal and how much of clean's margin above chance it removes.

    distance: the higher direction's R@10 minus 2x chance, on clean and on prefixed test
    captions (<= 0 meets the goal). removed: 1 - (row - chance) / (clean - chance), the
    worse direction, so 1.0 is "down to chance" and 0.0 is "as good as clean".
    """
    goal = GOAL_TIMES_CHANCE * chance
    out = []
    for r in rows:
        if r["victim"] != victim:
            continue
        c, p = r["final"]["clean"], r["final"]["prefixed"]
        pair = [c["i2t_R@10"], c["t2i_R@10"]]
        removed = min(1 - (v - chance) / max(cf - chance, 1e-6) for v, cf in zip(pair, clean_final))
        out.append({"row": r["row"], "distance_clean": round(max(pair) - goal, 1),
                    "distance_prefixed": round(max(p["i2t_R@10"], p["t2i_R@10"]) - goal, 1),
                    "margin_removed": round(removed, 2)})
    return out


# the controls: the same edit as a method, nothing optimised
CONTROLS = ("random", "random-words", "random-words-cluster", "random-words-cn", "random-words-rand",
            "random-words-rand+strip", "random-words-global", "clean+grayscale", "clean+strip", "conv-sample")
IMAGE_ONLY = ("em", "uc", "uc-text", "noise-only")
# an image edit that is not eps-bounded: its control makes the same edit without the grouping
IMAGE_CONTROL = {"conv": "conv-sample"}


# a method's caption edit -> the control that makes it with nothing optimised (else: per-caption random words)
CAPTION_CONTROL = {"mem3-cluster": "random-words-cluster", "cluster-trigger-only": "random-words-cluster",
                   "mem3-cn": "random-words-cn",  # its own clusters, so its own groups
                   "mem3-global": "random-words-global", "mem3-rand": "random-words-rand"}
STRIP_SURVIVES = {"mem3-rand"}  # a trigger at a random word boundary: strip mostly leaves it in


def matched_control(row: str) -> str:
    """The control that makes the same kind of edit as a row: noise for image-only rows (or rows
    whose trigger a countermeasure strips), words grouped and placed as the row's trigger otherwise."""
    method, _, defense = row.partition("+")
    if method in IMAGE_CONTROL:
        return IMAGE_CONTROL[method] + (f"+{defense}" if defense else "")
    if method in IMAGE_ONLY and defense.startswith("strip"):
        return "clean+strip"  # no trigger to strip: the strip removes real caption words, as on clean data
    if method in IMAGE_ONLY or (defense.startswith("strip") and method not in STRIP_SURVIVES):
        return "random"
    control = CAPTION_CONTROL.get(method, "random-words")
    return f"{control}+{defense}" if defense.startswith("strip") else control


def merge(parts: list[Path], out: Path) -> int:
    """Join result files of processes that ran disjoint rows side by side (one thread each on a CPU)."""
    merged: dict = {"rows": [], "protection": {}}
    for part in parts:
        data = json.loads(part.read_text())
        merged.setdefault("meta", {**data["meta"], "merged_from": [p.name for p in parts]})
        # a set re-protected by a later run keeps the first record: it describes the bytes the earlier
        # rows were trained on (the later run's record stays in its own partial file)
        for name, record in data["protection"].items():
            merged["protection"].setdefault(name, record)
        seen = {(r["row"], r["victim"]) for r in merged["rows"]}
        clash = [r["row"] for r in data["rows"] if (r["row"], r["victim"]) in seen]
        if clash:
            raise SystemExit(f"{part}: rows {clash} are already in an earlier file")
        merged["rows"] += data["rows"]
    out.write_text(json.dumps(merged, indent=1))
    print(f"{out}: {len(merged['rows'])} rows from {len(parts)} files")
    return 0


# ---------------------------------------------------------------- the 2-sd rule

def stats(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 2),
            "sd": round(float(np.std(values, ddof=1)), 2) if len(values) > 1 else None, "n": len(values)}


def differs(a: dict, b: dict) -> bool | None:
    """The rule: means differ by more than twice the pooled sd (None when a row has one seed)."""
    if a["sd"] is None or b["sd"] is None:
        return None
    pooled = math.sqrt((a["sd"] ** 2 + b["sd"] ** 2) / 2)
    return abs(a["mean"] - b["mean"]) > 2 * pooled
