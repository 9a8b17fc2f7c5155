"""The paper's protocol end to end on a dataset you hold (issue 16): ingest -> protect -> victims.

    python bench/reproduce_paper.py --dataset flickr8k --root /data/flickr8k --device cuda
    python bench/reproduce_paper.py --dataset flickr8k --root fake8k --tiny        # CPU smoke run

Stages (each timed):
1. ``mempipe ingest``: one sample per caption row for training (as the authors train); the
   test split is ``--test-images`` whole images (seeded; or ``--test-split FILE``) with their
   first caption, so test retrieval is one-to-one.
2. protect the training shards with MEM-3, MEM-5, EM and random noise (the paper preset:
   RN50 from scratch at 224 px, eps 8/255, 20 rounds x 200 surrogate steps, ...), and build
   the random-words control (3 random words per caption, clean images).
3. a victim per set, trained from scratch as the authors' scripts do (RN50, AdamW lr 5e-4,
   weight decay 0.1, warm-up + cosine, batch 128), then R@1/5/10 and median rank both ways
   on the clean test split.

Writes ``--out`` (JSON) and ``--table`` (Markdown). ``--tiny`` swaps in the 64 px CPU models
(tiny-vit surrogate with the cpu-tiny loop counts, tiny-resnet victim) for a smoke run; the
table then says so. With ``--limit-images`` the run uses part of the dataset and the JSON
extrapolates each stage's time linearly to the whole (labelled as such).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from mempipe_research.controls import derive, random_words_captions  # noqa: E402

from mempipe.engine import preset  # noqa: E402
from mempipe.evaluation.evaluate import evaluate  # noqa: E402
from mempipe.data.ingest import Source, read_rows, seeded_split, write_rows  # noqa: E402
from mempipe.run.in_process import protect  # noqa: E402
from mempipe.evaluation.victim import VictimConfig  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402

METHODS = {
    "mem3": dict(method="mem", trigger_len=3, trigger_scope="sample"),
    "mem5": dict(method="mem", trigger_len=5, trigger_scope="sample"),
    "em": dict(method="em"),
    "random": dict(method="random"),
}
DEFAULT_SETS = ["clean", "random-words", "random", "em", "mem3", "mem5"]
# the authors' victim: CyCLIP-style trainer, RN50 from scratch (their scripts pass --lr 5e-4)
PAPER_VICTIM = dict(arch="RN50", image_size=224, context_length=77, batch_size=128, lr=5e-4, weight_decay=0.1)
TINY_VICTIM = dict(arch="tiny-resnet", image_size=64, context_length=32, batch_size=128, lr=1e-3, weight_decay=0.1)
TINY_ENGINE = dict(outer_iters=2, train_steps=10, pgd_steps=3, hotflip_iters=1, candidates=4)


def stage_ingest(args, work: Path) -> dict:
    rows = read_rows(Source(args.root, args.dataset, annotations=args.annotations))
    ids = sorted({r.image_id for r in rows})
    if args.limit_images and args.limit_images < len(ids):
        keep = set(ids[: args.limit_images])
        rows = [r for r in rows if r.image_id in keep]
    if args.test_split:
        names = {line.strip() for line in Path(args.test_split).read_text().splitlines() if line.strip()}
        test = [r for r in rows if r.image_id in names]
        train = [r for r in rows if r.image_id not in names]
    else:
        train, test = seeded_split(rows, args.test_images, args.seed)
    test = [r for r in test if r.caption_index == 0]
    return {"rows_total": len(rows), "images_total": len({r.image_id for r in rows}),
            "train": write_rows(train, str(work / "train"), args.dataset, args.max_size, 1000, None),
            "test": write_rows(test, str(work / "test"), args.dataset, args.max_size, 1000, None),
            "images_in_dataset": len(ids)}


def gpu_needs(train_samples: int, protected_sets: int, victims: int, epochs: int,
              surrogate: str = "shared") -> dict | None:
    """What the full paper-protocol run needs on one H100: counted FLOPs (bench/flops.py) at the
    FLOP rate a recorded H100 run sustained. A projection, not a measurement."""
    path = ROOT / "bench" / "results" / "flops.json"
    if not path.exists():
        return None
    flops = json.loads(path.read_text())
    per_sample = flops["unit_flops"]["used_positions"]["per_sample"]
    if surrogate == "shared":  # the unit's work without its surrogate, plus this dataset's share of the run's one
        shared = flops["shared"]
        unit_row = next(r for r in shared["by_unit_size"] if r["unit"] == flops["unit"])
        run_level = shared["run_level_tflop"] * 1e12
        per_sample = unit_row["tflop_per_sample"] * 1e12 - run_level / shared["dataset_samples"] + run_level / train_samples
    step = flops["per_sample_flops"]["used_positions"]
    victim_per_sample_epoch = step["image_train"] + step["text_train"]
    rate = flops["recorded_gpu_run"]["achieved_tflops_overall"] * 1e12
    protect_h = train_samples * protected_sets * per_sample / rate / 3600
    victim_h = train_samples * epochs * victims * victim_per_sample_epoch / rate / 3600
    return {"basis": f"counted FLOPs (bench/results/flops.json, unit {flops['unit']}, {surrogate} surrogate) at "
                     f"{flops['recorded_gpu_run']['achieved_tflops_overall']} TFLOP/s, the rate a recorded "
                     f"{flops['recorded_gpu_run']['gpu']} run sustained", "train_samples": train_samples,
            "protect_gpu_hours": round(protect_h, 2), "victims_gpu_hours": round(victim_h, 2),
            "total_gpu_hours": round(protect_h + victim_h, 2)}


def table(results: dict) -> str:
    lines = [f"{results['meta']['mode']} run on {results['meta']['dataset']} ({results['meta']['device']}); "
             f"victim {results['meta']['victim']['arch']}, {results['meta']['victim']['epochs']} epochs; "
             f"{results['meta']['n_test']} test pairs, chance R@10 = {results['meta']['chance_R@10']}.", "",
             "| set | i2t R@1 | i2t R@5 | i2t R@10 | i2t MedR | t2i R@1 | t2i R@5 | t2i R@10 | t2i MedR |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        m = row["clean"]
        lines.append(f"| {name} | " + " | ".join(f"{m[f'{d}_{k}']:g}" for d in ("i2t", "t2i")
                                                 for k in ("R@1", "R@5", "R@10", "median_rank")) + " |")
    lines += ["", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in results["seconds"].items()]
    needs = results.get("gpu_needs_full_run")
    if needs:
        lines += ["", f"Full paper-protocol run on this dataset ({needs['train_samples']} training pairs), projected: "
                      f"{needs['protect_gpu_hours']} GPU-hours to protect, {needs['victims_gpu_hours']} for the "
                      f"victims ({needs['basis']})."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=("flickr8k", "flickr30k", "coco"))
    parser.add_argument("--root", required=True)
    parser.add_argument("--annotations", help="coco: the captions JSON")
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--test-split", help="file of test image names (e.g. Flickr_8k.testImages.txt)")
    parser.add_argument("--limit-images", type=int, default=0, help="use only the first N images (a partial run)")
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS))
    parser.add_argument("--epochs", type=int, default=32, help="victim epochs")
    parser.add_argument("--max-size", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: 64 px tiny models, few steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(ROOT / "bench" / "work" / "reproduce"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "reproduce_paper.json"))
    parser.add_argument("--table", help="Markdown table path (default: next to --out)")
    args = parser.parse_args()

    work = Path(args.work) / args.dataset
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = set(sets) - set(DEFAULT_SETS)
    if unknown:
        parser.error(f"unknown sets {sorted(unknown)}; choose from {DEFAULT_SETS}")
    seconds: dict[str, float] = {}
    started = time.time()
    ingested = stage_ingest(args, work / "shards")
    seconds["ingest"] = round(time.time() - started, 1)
    train, test = str(work / "shards" / "train"), str(work / "shards" / "test")

    engine = preset("cpu-tiny" if args.tiny else "paper").with_overrides(
        precision=args.precision, **(dict(TINY_ENGINE, trigger_scope="sample") if args.tiny else {}))
    paths = {"clean": train}
    protection = {}
    for name in sets:
        if name in METHODS:
            started = time.time()
            record = protect(train, str(work / "protected" / name), engine.with_overrides(**METHODS[name]), "png",
                             device=args.device).to_dict()
            seconds[f"protect {name}"] = round(time.time() - started, 1)
            protection[name] = {k: record[k] for k in ("samples_protected", "samples_failed", "seconds")}
            paths[name] = str(work / "protected" / name)
        elif name == "random-words":
            paths[name] = derive(name, train, train, work / "derived" / name,
                                 random_words_captions(args.seed))

    victim = VictimConfig(**(TINY_VICTIM if args.tiny else PAPER_VICTIM), epochs=args.epochs, seed=args.seed)
    rows = {}
    for name in sets:
        started = time.time()
        result = evaluate(paths[name], test, victim, "none", args.device, progress="off")
        seconds[f"victim {name}"] = round(time.time() - started, 1)
        rows[name] = {"clean": result["final"]["clean"], "prefixed": result["final"]["prefixed"],
                      "n_train": result["n_train"], "loss_curve": result["loss_curve"]}
        c = result["final"]["clean"]
        print(f"{name:13s} R@10 i2t {c['i2t_R@10']:5.1f}  t2i {c['t2i_R@10']:5.1f}  ({seconds[f'victim {name}']}s)",
              flush=True)

    chance = next(iter(rows.values()))["clean"]["chance_R@10"]
    fraction = ingested["images_total"] / ingested["images_in_dataset"]
    results = {
        "meta": {"mode": "tiny smoke" if args.tiny else "paper protocol", "dataset": args.dataset,
                 "device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                 "host": platform.node(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "engine": engine.to_dict(), "victim": victim.__dict__, "chance_R@10": chance,
                 "n_test": ingested["test"]["samples"], "ingest": ingested},
        "protection": protection, "rows": rows, "seconds": seconds,
        # a partial run (--limit-images) says what the whole dataset takes at the same rate
        "extrapolated_seconds_full_dataset": {k: round(v / fraction) for k, v in seconds.items()}
        if fraction < 1 else None,
    }
    results["extrapolated_hours_full_run"] = (round(sum(results["extrapolated_seconds_full_dataset"].values()) / 3600,
                                                    2) if fraction < 1 else round(sum(seconds.values()) / 3600, 2))
    full_train = round(ingested["train"]["samples"] / fraction)
    results["gpu_needs_full_run"] = gpu_needs(full_train, sum(s in METHODS for s in sets), len(sets), args.epochs,
                                              engine.surrogate)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, results)
    Path(args.table or out.with_suffix(".md")).write_text(table(results) + "\n")
    print(table(results))
    return 0 if all(math.isfinite(r["clean"]["i2t_R@10"]) for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
