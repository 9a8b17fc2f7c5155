"""GPU check of the paper preset (RN50 at 224 px, bf16): throughput, peak memory, bf16 vs fp32.

Times whole rounds of the MEM loop over one unit of 2,048 full-size samples, for the paper
preset as it is and for the execution options that keep its counts (torch.compile; larger
PGD batches and all HotFlip candidates in one text forward, which change PGD's in-batch
negatives), and extrapolates the full protocol (20 rounds, HotFlip in the first 5) from
them. Every phase is warmed up first on a small unit (cuDNN autotuning, compilation). The
JSON says which numbers are measured and which are extrapolated.

    python bench/gpu_check.py --out bench/results/gpu_check.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

from mempipe.data.demo_data import make_sample  # noqa: E402
from mempipe.engine import mem, preset  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402

VARIANTS = {
    "paper": {},
    "paper+compile": {"compile": True},
    "paper+big-batches": {"pgd_batch_size": 512, "candidate_chunk": 16},
}


def unit_data(n: int, size: int):
    samples = [make_sample(i, size, seed=0) for i in range(n)]
    images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).contiguous()
    return images, [s[1] for s in samples]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - start


def _unit(cfg, images, captions, device, gen):
    unit = mem.UnitTensors(images, captions, cfg, device, gen)
    unit.set_groups(None, gen)
    return unit


def one_round(cfg, images, captions, device, warm: int = 256):
    """Build a unit and surrogate, warm every phase up on a small unit, then time each phase of one round."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    unit = _unit(cfg, images, captions, device, gen)
    model = mem.surrogate_for(cfg, device, unit)
    opt = mem.surrogate_optimizer(model, cfg, device)
    small = _unit(cfg, images[:warm], captions[:warm], device, gen)
    _, warm_s = timed(lambda: (mem.train_surrogate(model, opt, small, cfg.with_overrides(train_steps=3), gen, device),
                               mem.hotflip_round(model, small, cfg, gen),
                               mem.pgd_round([model], small, cfg.with_overrides(pgd_steps=2), gen)))
    loss, t_train = timed(lambda: mem.train_surrogate(model, opt, unit, cfg, gen, device))
    (hb, ha), t_hot = timed(lambda: mem.hotflip_round(model, unit, cfg, gen))
    (pf, pl), t_pgd = timed(lambda: mem.pgd_round([model], unit, cfg, gen))
    return {"warm_up_s": warm_s, "train_s": t_train, "hotflip_s": t_hot, "pgd_s": t_pgd, "surrogate_loss": loss,
            "hotflip_loss": [hb, ha], "pgd_loss": [pf, pl]}


def default_path(unit: int, device, overrides: dict, ensemble_arch: str | None) -> dict:
    """The default protective path (``finetune-thief``: EM against a frozen pretrained surrogate, no
    surrogate training) at its real size: one PGD round over the unit, timed after a warm-up, and the
    samples/s of the whole path (its rounds of PGD). Weights are random: speed does not depend on them."""
    cfg = preset("finetune-thief").with_overrides(precision="bf16", **overrides)
    images, captions = unit_data(unit, cfg.image_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = _unit(cfg, images, captions, device, gen)
    models = [mem.surrogate_for(cfg.with_overrides(seed=0), device, data).eval().requires_grad_(False)]
    if ensemble_arch:
        models.append(mem.surrogate_for(cfg.with_overrides(arch=ensemble_arch, seed=1), device, data).eval()
                      .requires_grad_(False))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    small = _unit(cfg, images[:64], captions[:64], device, gen)
    _, warm_s = timed(lambda: mem.pgd_round(models, small, cfg.with_overrides(pgd_steps=1), gen))
    (first, last), pgd_s = timed(lambda: mem.pgd_round(models, data, cfg, gen))
    per_sample = cfg.outer_iters * pgd_s / unit
    return {"surrogates": [cfg.arch] + ([ensemble_arch] if ensemble_arch else []), "image_size": cfg.image_size,
            "unit": unit, "pgd_steps_per_round": cfg.pgd_steps, "rounds": cfg.outer_iters, "warm_up_s": round(warm_s, 2),
            "pgd_round_s": round(pgd_s, 3), "pgd_loss": [first, last], "samples_per_s": round(1 / per_sample, 1),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def extrapolate(paper, r: dict, timed_steps: int, unit: int, to_unit: int) -> dict:
    """Full protocol from one round; surrogate steps are fixed per round, HotFlip and PGD scale with the unit."""
    grow = to_unit / unit
    train = r["train_s"] * paper.train_steps / timed_steps
    full = (paper.outer_iters * (train + r["pgd_s"] * grow) + paper.hotflip_iters * r["hotflip_s"] * grow)
    return {"unit": to_unit, "full_protocol_s": round(full, 1), "samples_per_s": float(f"{to_unit / full:.3g}")}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/gpu_check.json")
    parser.add_argument("--unit", type=int, default=2048)
    parser.add_argument("--train-steps", type=int, default=50, help="surrogate steps timed (scaled to 200)")
    parser.add_argument("--small", type=int, default=256, help="unit size of the bf16-vs-fp32 check")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--overrides", default="{}", help="JSON engine overrides on the paper preset (smoke tests)")
    parser.add_argument("--default-only", action="store_true",
                        help="time only the default protective path (ViT-B-32, and ViT-B-32 + RN50) and exit")
    parser.add_argument("--default-overrides", default="{}", help="JSON overrides on finetune-thief (smoke tests)")
    parser.add_argument("--ensemble-arch", default="RN50", help="the second surrogate of the ensemble row")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    default_rows = {}
    for label, second in (("single", None), ("ensemble", args.ensemble_arch)):
        default_rows[label] = default_path(args.unit, device, json.loads(args.default_overrides), second)
        print("default path", label, json.dumps(default_rows[label]), flush=True)
    if args.default_only:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                                              "torch": torch.__version__, "commit": _commit(),
                                              "default_path": default_rows}, indent=1))
        return 0
    paper = preset("paper").with_overrides(**json.loads(args.overrides))
    images, captions = unit_data(args.unit, paper.image_size)
    result = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "torch": torch.__version__,
              "unit": args.unit, "commit": _commit(), "text_width": "used_positions",
              "train_steps_timed": args.train_steps, "preset": paper.to_dict(), "variants": {},
              "default_path": default_rows}

    for name in args.variants.split(","):
        cfg = paper.with_overrides(precision="bf16", train_steps=args.train_steps, **VARIANTS[name])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        r = one_round(cfg, images, captions, device)
        r.update(overrides=VARIANTS[name], precision=cfg.precision,
                 peak_gpu_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
                 measured=f"one round: {args.train_steps} surrogate steps, HotFlip and PGD over the whole unit",
                 extrapolated=[extrapolate(paper, r, args.train_steps, args.unit, u) for u in (args.unit, 4 * args.unit)])
        result["variants"][name] = r
        print(name, json.dumps(r), flush=True)
    # bf16 vs fp32 on the same small unit and seed: losses after one round
    small_images, small_captions = images[: args.small], captions[: args.small]
    check = {}
    for precision in ("fp32", "bf16"):
        c = paper.with_overrides(precision=precision, train_steps=20, pgd_steps=4, candidates=4)
        check[precision] = one_round(c, small_images, small_captions, device, warm=64)
    result["precision_check"] = {
        "fp32_pgd_loss": check["fp32"]["pgd_loss"], "bf16_pgd_loss": check["bf16"]["pgd_loss"],
        "fp32_surrogate_loss": check["fp32"]["surrogate_loss"], "bf16_surrogate_loss": check["bf16"]["surrogate_loss"],
        "relative_pgd_loss_difference": abs(check["fp32"]["pgd_loss"][1] - check["bf16"]["pgd_loss"][1]) / abs(check["fp32"]["pgd_loss"][1]),
        "tolerance": 0.05,
    }
    print(json.dumps(result["precision_check"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
