"""Effectiveness benchmark: does a victim trained on protected shards learn?

Protects demo data with every method, builds the control and ablation sets, applies
the countermeasures, trains victims from scratch and tests retrieval on the clean test
split (and on test captions with random words in front). Writes
bench/results/effectiveness.json; bench/make_tables.py turns it into the README tables.

    python bench/effectiveness.py                      # everything, on CPU (slow)
    python bench/effectiveness.py --device cuda        # the whole table on a GPU
    python bench/effectiveness.py --rows clean,mem3,random-words --victims tiny-resnet
    python bench/effectiveness.py --style photo --device cuda   # the photo-like regime: 8,000 pairs at the
                                                               # calibrated difficulty -> effectiveness_photo.json
    # two CPU processes, disjoint rows, one thread each, then joined:
    OMP_NUM_THREADS=1 python bench/effectiveness.py --style photo --rows mem3,noise-only --out a.json &
    OMP_NUM_THREADS=1 python bench/effectiveness.py --style photo --rows em,uc --out b.json; wait
    python bench/effectiveness.py --style photo --merge a.json,b.json
    # the fine-tuning regime (public pretrained stand-ins; bench/finetune_regime.py), after calibration:
    python bench/effectiveness.py --regime finetune --protect-only
    python bench/effectiveness.py --regime finetune --victims A --seeds 3 --out a.json &
    python bench/effectiveness.py --regime finetune --victims B --seeds 3 --out b.json; wait
    python bench/effectiveness.py --regime finetune --report a.json,b.json   # -> effectiveness_finetune.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from mempipe.data.demo_data import PHOTO_CAPTIONS_PER_IMAGE, PHOTO_DIFFICULTY, Style, write_demo_data  # noqa: E402
from mempipe.engine import preset  # noqa: E402
from mempipe.evaluation.evaluate import evaluate, plot_curves  # noqa: E402
from mempipe.evaluation.inspect_output import summarize  # noqa: E402
from mempipe.run.in_process import protect  # noqa: E402
from mempipe_research.controls import (derive, global_random_words_captions, group_random_words_captions,  # noqa: E402
                                      placed_random_words_captions, random_words_captions)
from mempipe_research.report import merge  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402
from mempipe.evaluation.victim import VictimConfig  # noqa: E402

# protected variants: name -> engine overrides on the preset
VARIANTS = {
    "random": dict(method="random"),
    "em": dict(method="em"),
    "uc": dict(method="uc"),
    "mem3": dict(method="mem", trigger_len=3, trigger_scope="sample"),
    "mem5": dict(method="mem", trigger_len=5, trigger_scope="sample"),
    "mem3-cluster": dict(method="mem", trigger_len=3, trigger_scope="cluster"),
    "mem3-global": dict(method="mem", trigger_len=3, trigger_scope="global"),
    # beyond the paper: one noise pattern and one trigger per semantic cluster
    "mem3-cn": dict(method="mem", trigger_len=3, trigger_scope="cluster", noise_scope="cluster"),
    # issue 8: shortcuts meant to survive stripping the first k caption words
    "uc-text": dict(method="uc", cluster_features="text"),
    "mem3-cs": dict(method="mem", trigger_len=3, trigger_scope="sample", noise_scope="cluster+sample",
                    cluster_features="text"),
    "mem3-joint": dict(method="mem", trigger_len=3, trigger_scope="sample", pgd_objective="joint"),
    "mem3-rand": dict(method="mem", trigger_len=3, trigger_scope="sample", trigger_placement="random",
                      trigger_vocab="common"),
    # issue 13, deliverable 5: a model-free, not eps-bounded shortcut (CUDA-style random blur per
    # cluster); epsilon 127 only keeps the change within int8, and its cost is read as PSNR/SSIM
    "conv": dict(method="conv", noise_scope="cluster", epsilon=127),
    "conv-sample": dict(method="conv", noise_scope="sample", epsilon=127),
    # issue 14: one surrogate per run vs one per unit, at a unit size where a run has several units
    "mem3-u250": dict(method="mem", trigger_len=3, trigger_scope="sample", unit_size=250),
    "mem3-shared": dict(method="mem", trigger_len=3, trigger_scope="sample", unit_size=250, surrogate="shared"),
    # issue 7: the GPU fast path (bf16 autocast; the same as mem3 on a CPU, where autocast is off)
    "mem3-bf16": dict(method="mem", trigger_len=3, trigger_scope="sample", precision="bf16"),
}
# rows: name -> (training set, countermeasure, what it shows)
ROWS = {
    "clean": ("clean", "none", "reference: clean training data"),
    "random-words": ("random-words", "none", "control: 3 random words per caption, clean images, nothing optimised"),
    "random": ("random", "none", "baseline: uniform noise in [-eps, eps]"),
    "em": ("em", "none", "baseline: image-only error-minimising noise"),
    "uc": ("uc", "none", "baseline: cluster-wise error-minimising noise (UC-style)"),
    "mem3": ("mem3", "none", "MEM-3, per-sample triggers"),
    "mem3-bf16": ("mem3-bf16", "none", "MEM-3 protected in bf16 on a GPU (fast path vs fp32)"),
    "mem5": ("mem5", "none", "MEM-5, per-sample triggers"),
    "mem3-cluster": ("mem3-cluster", "none", "MEM-3, one trigger per cluster"),
    "mem3-global": ("mem3-global", "none", "MEM-3, one trigger for the dataset"),
    "mem3-cn": ("mem3-cn", "none", "MEM-3 with cluster-wise noise and cluster triggers"),
    "mem3-cn+strip": ("mem3-cn", "strip:3", "cluster-wise MEM-3, first 3 caption words stripped"),
    "trigger-only": ("mem3-trigger-only", "none", "ablation: MEM-3 captions, original images"),
    # a shared trigger is no per-caption id, so the per-caption control says nothing of it: its own control
    # keeps the grouping and the caption format and optimises nothing
    "random-words-cluster": ("random-words-cluster", "none",
                             "control for mem3-cluster: its trigger groups, each given 3 random words, clean images"),
    "random-words-cn": ("random-words-cn", "none", "control: mem3-cn's caption groups, each given its own 3 random words"),
    "random-words-rand": ("random-words-rand", "none",
                          "control for mem3-rand: 3 random common words at a random word boundary, clean images"),
    "random-words-rand+strip": ("random-words-rand", "strip:3", "mem3-rand's control, first 3 caption words stripped"),
    "random-words-global": ("random-words-global", "none", "control for mem3-global: one random triple before every caption"),
    "cluster-trigger-only": ("mem3-cluster-trigger-only", "none", "ablation: mem3-cluster captions, original images"),
    "mem3-cluster+strip": ("mem3-cluster", "strip:3", "cluster-trigger MEM-3, first 3 caption words stripped"),
    "noise-only": ("mem3-noise-only", "none", "ablation: MEM-3 images, original captions"),
    "mem3+strip": ("mem3", "strip:3", "countermeasure: first 3 caption words stripped"),
    "mem3+jpeg75": ("mem3", "jpeg:75", "countermeasure: JPEG re-encoding, quality 75"),
    "mem3+jpeg10": ("mem3", "jpeg:10", "countermeasure: JPEG re-encoding, quality 10"),
    "mem3+grayscale": ("mem3", "grayscale", "countermeasure: grayscale (image shortcut squeezing)"),
    "mem3+crop": ("mem3", "crop", "countermeasure: random-resized-crop augmentation"),
    "uc-text": ("uc-text", "none", "cluster-wise EM noise, clusters of caption features"),
    "uc-text+strip": ("uc-text", "strip:3", "cluster-wise EM noise (caption clusters), first 3 words stripped"),
    "mem3-cs": ("mem3-cs", "none", "MEM-3, noise = caption-cluster pattern (eps 4) + per-sample (eps 4)"),
    "mem3-cs+strip": ("mem3-cs", "strip:3", "cluster+sample MEM-3, first 3 caption words stripped"),
    "mem3-joint": ("mem3-joint", "none", "MEM-3, noise minimises the loss with and without the trigger"),
    "mem3-joint+strip": ("mem3-joint", "strip:3", "joint-objective MEM-3, first 3 caption words stripped"),
    "mem3-rand": ("mem3-rand", "none", "MEM-3, trigger of common words at a random word boundary"),
    "mem3-rand+strip": ("mem3-rand", "strip:3", "random-placement MEM-3, first 3 caption words stripped"),
    "mem3-rand+jpeg75": ("mem3-rand", "jpeg:75", "random-placement MEM-3, JPEG quality 75"),
    "mem3-rand+crop": ("mem3-rand", "crop", "random-placement MEM-3, random-resized crops"),
    "mem3-rand+jpeg10": ("mem3-rand", "jpeg:10", "random-placement MEM-3, JPEG quality 10"),
    "mem3-rand+grayscale": ("mem3-rand", "grayscale", "random-placement MEM-3, grayscale"),
    "mem3-u250": ("mem3-u250", "none", "MEM-3, units of 250, each with its own surrogate (per-unit)"),
    "mem3-shared": ("mem3-shared", "none", "MEM-3, units of 250, one shared surrogate for the run (frozen in units)"),
    "conv": ("conv", "none", "baseline: CUDA-style random blur filter per cluster, model-free, not eps-bounded"),
    "conv-sample": ("conv-sample", "none", "control for conv: a random blur filter per image, no grouping"),
    # the countermeasure's own cost on clean data: what a row under a countermeasure is compared with
    "clean+grayscale": ("clean", "grayscale", "control: clean data trained in grayscale"),
    # strip on a set with no trigger removes real caption words: an image-only row under strip is judged here
    "clean+strip": ("clean", "strip:3", "control: clean data, first 3 caption words stripped"),
}

# the most telling rows first, so that a run cut short still answers the main question
DEFAULT_ORDER = ["clean", "random-words", "mem3", "mem3+strip", "em", "random", "uc", "mem5", "mem3-cluster",
                 "mem3-global", "mem3-cn", "mem3-cn+strip", "trigger-only", "noise-only", "random-words-cluster", "cluster-trigger-only",
                 "mem3-cluster+strip", "mem3+jpeg75",
                 "mem3+jpeg10", "mem3+grayscale", "clean+grayscale", "mem3+crop",
                 "mem3-rand", "random-words-rand", "mem3-rand+strip", "random-words-rand+strip", "random-words-cn", "random-words-global", "mem3-joint", "mem3-joint+strip", "mem3-cs", "mem3-cs+strip",
                 "uc-text", "uc-text+strip", "clean+strip", "mem3-rand+jpeg75", "mem3-rand+crop", "mem3-rand+jpeg10",
                 "mem3-rand+grayscale", "conv", "conv-sample"]


# derived training sets: name -> (work dir under derived/, images from, captions from, caption edit(seed) or None)
DERIVED = {
    "random-words": ("random-words", "clean", "clean", random_words_captions),
    "mem3-trigger-only": ("trigger-only", "clean", "mem3", None),
    "mem3-noise-only": ("noise-only", "mem3", "clean", None),
    "mem3-cluster-trigger-only": ("cluster-trigger-only", "clean", "mem3-cluster", None),
    "random-words-cluster": ("random-words-cluster", "clean", "mem3-cluster", group_random_words_captions),
    "random-words-cn": ("random-words-cn", "clean", "mem3-cn", group_random_words_captions),
    "random-words-rand": ("random-words-rand", "clean", "clean", placed_random_words_captions),
    "random-words-global": ("random-words-global", "clean", "clean", global_random_words_captions),
}


def main() -> int:
    if "--regime" in sys.argv:   # the fine-tuning regime: public pretrained stand-ins (bench/finetune_regime.py)
        from finetune_regime import effectiveness_main   # a sibling script (bench/ is on the path)

        return effectiveness_main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", default=",".join(DEFAULT_ORDER))
    parser.add_argument("--victims", default="tiny-resnet,small-vit")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--style", choices=("scenes", "photo"), default="scenes")
    parser.add_argument("--difficulty", type=float, default=PHOTO_DIFFICULTY,
                        help="photo style: the level frozen by bench/calibrate.py (never tuned on protection rows)")
    parser.add_argument("--captions-per-image", type=int, default=None,
                        help="photo style: train pairs per image (--train counts pairs); default: the frozen "
                             f"{PHOTO_CAPTIONS_PER_IMAGE} (photo), 1 (scenes)")
    parser.add_argument("--train", type=int, default=None, help="default: 2,000 (scenes), 8,000 (photo)")
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--preset", default="cpu-tiny")
    parser.add_argument("--overrides", default="{}", help="JSON engine overrides applied to every variant")
    parser.add_argument("--work", default=None, help="default: bench/work (scenes), bench/work/photo (photo)")
    parser.add_argument("--out", default=None, help="default: bench/results/effectiveness[_photo].json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix for row names (e.g. @full for a stronger protocol)")
    parser.add_argument("--merge", help="comma-separated result files of runs in parallel (disjoint rows) -> --out")
    args = parser.parse_args()
    if args.merge:
        return merge([Path(p) for p in args.merge.split(",")], Path(args.out or ROOT / "bench" / "results" / (
            "effectiveness_photo.json" if args.style == "photo" else "effectiveness.json")))
    photo = args.style == "photo"
    args.train = args.train or (8000 if photo else 2000)
    args.captions_per_image = args.captions_per_image or (PHOTO_CAPTIONS_PER_IMAGE if photo else 1)
    shape = f"photo_d{args.difficulty}" + (f"_c{args.captions_per_image}" if args.captions_per_image > 1 else "")
    args.work = args.work or str(ROOT / "bench" / "work" / (shape if photo else ""))
    args.out = args.out or str(ROOT / "bench" / "results" / ("effectiveness_photo.json" if photo else "effectiveness.json"))

    results_dir = Path(args.out).parent
    results_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    data = work / "data"
    if not (data / "test").exists():
        write_demo_data(str(data), args.train, args.test, size=64, seed=args.seed, style=Style(args.style, args.difficulty, args.captions_per_image))
    clean = str(data / "train")
    # the demo-scenes table was measured with a surrogate per unit, before the default moved to shared
    style_default = {} if photo else {"surrogate": "per-unit"}
    base = preset(args.preset).with_overrides(**{**style_default, **json.loads(args.overrides)})
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {list(ROWS)}")

    sets: dict[str, str] = {"clean": clean}
    protection: dict[str, dict] = {}
    needed = {ROWS[r][0] for r in rows}
    needed |= {source for name in needed & set(DERIVED) for source in DERIVED[name][1:3]}
    for name, overrides in VARIANTS.items():
        if name in needed:
            out = work / ("protected" + args.tag.replace("@", "_")) / name
            record = protect(clean, str(out), base.with_overrides(**overrides), "png", device=args.device).to_dict()
            sets[name] = str(out)
            if record["shards_written"] == 0:  # already protected by an earlier run: keep that run's record
                continue
            info = summarize(str(out), clean, grid_path=str(results_dir / f"grid_{name}{'_photo' if photo else ''}.png") if name == "mem3" and not args.tag else None)
            protection[name] = {"config": record["config"], "seconds": record["seconds"],
                                "max_delta": info["max_delta"], "psnr": info["psnr_mean"], "ssim": info["ssim_mean"],
                                "distinct_triggers": info["distinct_triggers"], "unit_logs": [u["log"] for u in record["units"]]}
            print(f"protected {name}: {protection[name]['seconds']}s max|d|={info['max_delta']} psnr={info['psnr_mean']}", flush=True)
    for name, (folder, images_from, captions_from, edit) in DERIVED.items():
        if name in needed:
            sets[name] = derive(folder, sets[images_from], sets[captions_from], work / "derived" / folder,
                                edit(args.seed) if edit else None)

    results = {"meta": {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
                        "train": args.train, "test": args.test, "epochs": args.epochs, "preset": args.preset,
                        "style": args.style, "difficulty": args.difficulty if photo else None,
                        "captions_per_image": args.captions_per_image,
                        "engine": base.to_dict(), "date": time.strftime("%Y-%m-%d %H:%M:%S")},
               "protection": protection, "rows": []}
    if os.path.exists(args.out):  # keep rows of earlier partial runs that this run does not redo
        previous = json.load(open(args.out))
        results["rows"] = [r for r in previous.get("rows", []) if not (r["row"] in [x + args.tag for x in rows] and r["victim"] in args.victims.split(","))]
        results["protection"] = {**previous.get("protection", {}), **{k + args.tag: v for k, v in protection.items()}}
        results["meta"] = {**previous.get("meta", {}), **({args.tag: results["meta"]} if args.tag else results["meta"])}
    for row in rows:
        for victim in args.victims.split(","):
            set_name, defense, what = ROWS[row]
            started = time.time()
            result = evaluate(sets[set_name], str(data / "test"), VictimConfig(arch=victim, epochs=args.epochs, seed=args.seed),
                              defense, args.device, progress="off")
            if row in ("clean", "mem3") and victim == "tiny-resnet" and not args.tag:
                plot_curves(result, str(results_dir / f"curve_{row}_{victim}{'_photo' if photo else ''}.png"))
            entry = {"source": f"{args.device}: {results['meta'].get('gpu') or platform.node()}, {time.strftime('%Y-%m-%d')}",
                     "row": row + args.tag, "victim": victim, "training_set": set_name, "defense": defense, "what": what,
                     "final": result["final"], "loss_curve": result["loss_curve"],
                     "clean_R@10_per_epoch": [[e["clean"]["i2t_R@10"], e["clean"]["t2i_R@10"]] for e in result["epochs"]],
                     "seconds": round(time.time() - started, 1), "device": args.device}
            results["rows"].append(entry)
            c, p = result["final"]["clean"], result["final"]["prefixed"]
            print(f"{victim:12s} {row:16s} clean R@10 {c['i2t_R@10']:5.1f}/{c['t2i_R@10']:5.1f}  "
                  f"prefixed {p['i2t_R@10']:5.1f}/{p['t2i_R@10']:5.1f}  ({entry['seconds']}s)", flush=True)
            write_result(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
