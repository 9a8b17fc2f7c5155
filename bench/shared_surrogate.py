"""Shared vs per-unit surrogate on the CPU, in one run, on the same samples (issue 14).

Both paths protect the same demo samples in units of ``--unit`` samples with the same
per-sample loop counts (rounds, PGD steps, HotFlip rounds and candidates of cpu-tiny):
- per-unit: every unit trains its own surrogate from scratch (train_steps per round);
- shared: one surrogate trained once by the same min-min loop on one unit-sized sample,
  then every unit starts from it with ``unit_train_steps`` surrogate steps per round.
The paths alternate (``--repeats``) and the fastest of each counts: the machine is shared.
With one unit (2,000 samples in a 2,048 unit) the two paths do the same work; the saving
grows with the number of units, which is what a dataset of millions is made of.

    python bench/shared_surrogate.py --samples 2000 --unit 250
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

from mempipe.data.demo_data import make_sample  # noqa: E402
from mempipe.engine import Given, preset, protect_unit  # noqa: E402
from mempipe.engine.mem import train_shared_surrogate, unit_config  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402


def run(images: torch.Tensor, captions: list[str], cfg, unit: int) -> dict:
    started = time.perf_counter()
    surrogate, shared_s = None, 0.0
    if cfg.surrogate == "shared":
        surrogate = train_shared_surrogate(images[:unit], captions[:unit], cfg)
        shared_s = time.perf_counter() - started
    losses = []
    for a in range(0, len(images), unit):
        result = protect_unit(images[a : a + unit], captions[a : a + unit], unit_config(cfg), given=Given(surrogate=surrogate))
        losses.append(result.log[-1]["pgd_loss_last"])
    total = time.perf_counter() - started
    return {"seconds": round(total, 2), "shared_surrogate_seconds": round(shared_s, 2),
            "samples_per_s": round(len(images) / total, 2), "final_pgd_loss_mean": round(float(np.mean(losses)), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--unit", type=int, default=250)
    parser.add_argument("--unit-train-steps", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "shared_surrogate.json"))
    args = parser.parse_args()
    samples = [make_sample(i, 64, seed=0) for i in range(args.samples)]
    images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).contiguous()
    captions = [s[1] for s in samples]
    base = preset("cpu-tiny").with_overrides(unit_size=args.unit, unit_train_steps=args.unit_train_steps)
    paths = {"per-unit": base, "shared": base.with_overrides(surrogate="shared")}
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, cfg in paths.items():
            result = run(images, captions, cfg, args.unit)
            print(name, result, flush=True)
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    out = {"host": platform.node(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "samples": args.samples, "unit": args.unit,
           "units": -(-args.samples // args.unit), "engine": base.to_dict(), "paths": best,
           "speedup_shared_over_per_unit": round(best["per-unit"]["seconds"] / best["shared"]["seconds"], 2)}
    write_result(Path(args.out), out)
    print(json.dumps({k: out[k] for k in ("units", "paths", "speedup_shared_over_per_unit")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
