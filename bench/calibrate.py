"""Calibrate the photo-like regime on clean and random-words curves alone.

``--regime finetune``: the fine-tuning regime instead (public pretrained stand-ins fine-tuned on
the owner's pairs; ``bench/finetune_regime.py``):

    python bench/calibrate.py --regime finetune --models A --out a.json &   # one process per public model
    python bench/calibrate.py --regime finetune --models B --out b.json; wait
    python bench/calibrate.py --regime finetune --judge a.json,b.json      # -> calibration_finetune.json

For each difficulty level of ``mempipe demo-data --style photo``: train a victim from
scratch on the clean pairs and on the random-words control (3 random words in front of
every caption, clean images, nothing optimised) and record retrieval on the clean test
split every epoch. A level is valid when

- the clean victim's final R@10 is in [15, 70] in both directions (slow content, far
  from the demo scenes' 99) and still rising after epoch 10, and
- the control keeps at least 70 % of clean's margin above chance in both directions
  (otherwise caption words alone defeat the victim and no protection row can be told
  from the control).

The pick is the hardest valid level; with none valid, the level where the control keeps
the largest share (a finding, reported as such). No protected set is trained on here:
the chosen value is frozen in ``mempipe.data.demo_data.PHOTO_DIFFICULTY`` and never moved after
protection results are seen (a test checks that constant against calibration.json).

    python bench/calibrate.py                              # 8,000 / 500 pairs, 30 epochs, CPU: hours
    python bench/calibrate.py --levels 0.3,0.6 --device cuda
    # two CPU processes, one run kind each, then judged together:
    python bench/calibrate.py --runs clean --threads 1 --out a.json & \
    python bench/calibrate.py --runs random-words --threads 1 --out b.json; wait
    python bench/calibrate.py --merge a.json,b.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from mempipe.evaluation.datasets import load_pairs, prefix_random_words  # noqa: E402
from mempipe.data.demo_data import Style, write_demo_data  # noqa: E402
from mempipe.evaluation.evaluate import PREFIX_WORDS  # noqa: E402
from mempipe.evaluation.victim import VictimConfig, train_victim  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402

CLEAN_RANGE = (15.0, 70.0)
CONTROL_SHARE = 0.70
RISING_AFTER_EPOCH = 10
RISING_BY = 1.0   # R@10 points gained after epoch 10 that count as "still rising"


def judge(clean_curve: list[list[float]], control_final: list[float], chance: float) -> dict:
    """The issue's criteria for one level: per-epoch clean R@10 [i2t, t2i] and the control's final R@10."""
    final = clean_curve[-1]
    at10 = clean_curve[min(RISING_AFTER_EPOCH, len(clean_curve)) - 1]
    in_range = all(CLEAN_RANGE[0] <= v <= CLEAN_RANGE[1] for v in final)
    rising = all(f - a >= RISING_BY for f, a in zip(final, at10))
    shares = [(c - chance) / max(f - chance, 1e-6) for c, f in zip(control_final, final)]
    control_ok = all(s >= CONTROL_SHARE for s in shares)
    return {"clean_final": final, "clean_at_epoch_10": at10, "control_final": control_final,
            "control_share_of_margin": [round(s, 3) for s in shares], "clean_in_range": in_range,
            "still_rising_after_10": rising, "control_keeps_70pct": control_ok,
            "valid": in_range and rising and control_ok}


def pick(levels: dict[str, dict]) -> dict:
    valid = [float(k) for k, v in levels.items() if v["verdict"]["valid"]]
    if valid:
        return {"difficulty": max(valid), "rule": "hardest level meeting every criterion", "criteria_met": True}
    best = max(levels, key=lambda k: min(levels[k]["verdict"]["control_share_of_margin"]))
    return {"difficulty": float(best), "criteria_met": False,
            "rule": "no level meets every criterion: the level where the control keeps the largest share"}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(results["levels"], key=float)
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 3.4), squeeze=False)
    for ax, level in zip(axes[0], levels):
        entry = results["levels"][level]
        for run, style in (("clean", "-"), ("random-words", "--")):
            curve = entry[run]["clean_R@10_per_epoch"]
            epochs = range(1, len(curve) + 1)
            ax.plot(epochs, [c[0] for c in curve], style, color="C0", label=f"{run} i2t")
            ax.plot(epochs, [c[1] for c in curve], style, color="C1", label=f"{run} t2i")
        ax.axhline(entry["chance_R@10"], color="gray", lw=0.8, ls=":", label="chance")
        ax.axhspan(*CLEAN_RANGE, color="green", alpha=0.06)
        ax.set_title(f"difficulty {level}" + (" (picked)" if float(level) == results["pick"]["difficulty"] else ""))
        ax.set_xlabel("epoch"), ax.set_ylabel("clean test R@10 (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def finish(results: dict, out: Path) -> None:
    """Judge every level that has both curves, pick, plot, write."""
    for level, entry in results["levels"].items():
        if "clean" in entry and "random-words" in entry:
            entry["verdict"] = judge(entry["clean"]["clean_R@10_per_epoch"],
                                     entry["random-words"]["clean_R@10_per_epoch"][-1], entry["chance_R@10"])
            print(f"difficulty {level}: {entry['verdict']}", flush=True)
    judged = {k: v for k, v in results["levels"].items() if "verdict" in v}
    if judged:
        results["pick"] = pick(judged)
        plot(results, out.with_suffix(".png"))
        print("pick:", results["pick"], flush=True)
    write_result(out, results)


def merge(parts: list[Path], out: Path) -> int:
    results: dict = {"levels": {}}
    for part in parts:
        data = json.loads(part.read_text())
        results["meta"] = data["meta"]
        for level, entry in data["levels"].items():
            results["levels"].setdefault(level, {}).update({k: v for k, v in entry.items() if k != "verdict"})
    results["meta"]["merged_from"] = [p.name for p in parts]
    finish(results, out)
    return 0


def main() -> int:
    if "--regime" in sys.argv:   # the fine-tuning regime: public pretrained stand-ins (bench/finetune_regime.py)
        from finetune_regime import calibrate_main   # a sibling script (bench/ is on the path)

        return calibrate_main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="0.2,0.5,0.8")
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--victim", default="tiny-resnet")
    parser.add_argument("--runs", default="clean,random-words")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--captions-per-image", type=int, default=1,
                        help="train pairs per image (Flickr8K: 5); --train stays the number of pairs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work", default=str(ROOT / "bench" / "work" / "calibration"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "calibration.json"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--merge", help="comma-separated result files of partial runs: judge them together into --out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge:
        return merge([Path(p) for p in args.merge.split(",")], Path(args.out))

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["meta"] = {"host": platform.node(), "device": args.device, "torch": torch.__version__,
                       "victim": args.victim, "epochs": args.epochs, "train": args.train, "test": args.test,
                       "captions_per_image": args.captions_per_image, "random_words": PREFIX_WORDS, "criteria": {"clean_range": CLEAN_RANGE,
                       "control_share": CONTROL_SHARE, "rising_after_epoch": RISING_AFTER_EPOCH,
                       "rising_by": RISING_BY}, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    results.setdefault("levels", {})
    for level in [float(x) for x in args.levels.split(",")]:
        data = Path(args.work) / (f"d{level}" + (f"_c{args.captions_per_image}" if args.captions_per_image > 1 else ""))
        if not (data / "test").exists():
            write_demo_data(str(data), args.train, args.test, size=64, seed=args.seed, style=Style("photo", level, args.captions_per_image))
        images, captions, _ = load_pairs(str(data / "train"), 64)
        test_images, test_captions, _ = load_pairs(str(data / "test"), 64)
        entry = results["levels"].setdefault(str(level), {})
        for run in args.runs.split(","):
            train_caps = prefix_random_words(captions, PREFIX_WORDS, seed=args.seed + 99) if run == "random-words" else captions
            started = time.time()
            victim = train_victim(images, train_caps, VictimConfig(arch=args.victim, epochs=args.epochs, seed=args.seed),
                                  {"clean": (test_images, test_captions)}, device=args.device)
            curve = [[e["clean"]["i2t_R@10"], e["clean"]["t2i_R@10"]] for e in victim.epochs]
            entry[run] = {"clean_R@10_per_epoch": curve, "final": victim.epochs[-1]["clean"],
                          "loss_curve": victim.loss_curve, "seconds": round(time.time() - started, 1)}
            entry["chance_R@10"] = victim.epochs[-1]["clean"]["chance_R@10"]
            print(f"difficulty {level}: {run:13s} R@10 {curve[-1][0]:5.1f}/{curve[-1][1]:5.1f} "
                  f"(epoch 10: {curve[min(10, len(curve)) - 1]})  {entry[run]['seconds']}s", flush=True)
            write_result(out, results)
    finish(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
