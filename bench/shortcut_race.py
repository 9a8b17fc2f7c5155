"""Why no image noise protects the demo data: does a victim learn an eps-bounded pattern at all?

Unlearnable examples work when the planted shortcut is learned *before* the content. This
bench plants shortcuts that are as easy as a pattern can be (no surrogate, no optimisation:
fixed random patterns, perfectly correlated with the captions) and measures two things for
a victim trained from scratch on each set:

- ``clean`` R@10: retrieval on the clean test split (the protection question);
- ``code`` R@10: the victim sees only the planted noise (on a flat gray image) of 500
  training samples and must retrieve their training captions. Chance means the victim
  ignored the pattern; a high value means it learned it.

Sets (all within the same L-inf budget as mempipe unless stated):
  clean            nothing planted
  cluster-eps8     one random 8x8-tiled +-eps pattern per caption cluster (k-means, 200 clusters
                   of bag-of-words caption vectors): the class-wise noise of classification
  cluster-eps32    the same at 4x the budget
  cluster-gray     the same patterns on flat gray images: no content to compete with
  word-code        noise = sign of the sum of one pattern per caption word: a per-sample
                   pattern that encodes the caption itself, word by word
  trigger-code     3 random code words (of 64) written in front of each caption, noise = sign of
                   the sum of their patterns: MEM's shortcut with the noise made decodable
  hard-clean, hard-trigger-code
                   the same scenes made slower to learn (random contrast, colour cast and grain on
                   train and test images alike), clean and with the trigger code

    python bench/shortcut_race.py              # ~10 min on 2 CPU cores (8 victim epochs per set)
    python bench/shortcut_race.py --style photo   # the photo-like regime at its calibrated difficulty,
                                                  # 8,000 pairs -> bench/results/shortcut_race_photo.json
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

from mempipe.evaluation.datasets import load_pairs  # noqa: E402
from mempipe.data.demo_data import PHOTO_DIFFICULTY, Style, write_demo_data  # noqa: E402
from mempipe.engine.clusters import kmeans  # noqa: E402
from mempipe.engine.text import encode_captions, random_trigger_ids, tokenizer  # noqa: E402
from mempipe.evaluation.victim import VictimConfig, train_victim  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402

# photo style: the class-wise race at eps 8 without grain on top (grain drowns an 8-level pattern)
PHOTO_SETS = ["clean", "cluster-eps8", "cluster-gray", "trigger-code"]
SETS = ["clean", "cluster-eps8", "cluster-eps32", "cluster-gray", "word-code", "trigger-code", "hard-clean",
        "hard-trigger-code"]


def harder(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Nuisance variation that content features must see through: contrast, colour cast, grain."""
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.35, 1.0, generator=g)
    cast = torch.empty(n, 3, 1, 1).uniform_(-40, 40, generator=g)
    grain = 20 * torch.randn(images.shape, generator=g)
    return ((images.float() - 128) * contrast + 128 + cast + grain).clamp(0, 255).to(torch.uint8)


def tiled_patterns(count: int, size: int, tile: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random tile x tile colour patterns repeated over a size x size image."""
    reps = -(-size // tile)
    return torch.randn(count, 3, tile, tile, generator=generator).repeat(1, 1, reps, reps)[..., :size, :size]


def caption_clusters(body: torch.Tensor, lengths: torch.Tensor, k: int) -> torch.Tensor:
    bags = torch.zeros(len(body), int(body.max()) + 1)
    for i in range(len(body)):
        bags[i, body[i, : lengths[i]]] = 1
    bags = bags[:, bags.sum(0) > 0]
    return kmeans(torch.nn.functional.normalize(bags, dim=1), k, seed=0)[0]


def plant(name: str, images: torch.Tensor, captions: list[str], eps: int, generator: torch.Generator):
    """(training images, training captions, the planted noise) for one set."""
    n, size = len(images), images.shape[-1]
    body, lengths = encode_captions(captions, 30)
    if name == "clean":
        return images, captions, torch.zeros(images.shape)
    if name.startswith("cluster"):
        clusters = caption_clusters(body, lengths, 200)
        noise = tiled_patterns(int(clusters.max()) + 1, size, 8, generator)[clusters]
        budget = 32 if name == "cluster-eps32" else eps
        noise = budget * noise.sign()
        base = torch.full_like(images, 128) if name == "cluster-gray" else images
        return (base.float() + noise).clamp(0, 255).to(torch.uint8), captions, noise
    if name == "word-code":
        vocab = body.unique()
        index = torch.full((int(vocab.max()) + 1,), -1, dtype=torch.long)
        index[vocab] = torch.arange(len(vocab))
        patterns = tiled_patterns(len(vocab), size, 8, generator)
        noise = torch.stack([patterns[index[body[i, : lengths[i]].unique()]].sum(0) for i in range(n)])
    elif name == "trigger-code":
        codebook = random_trigger_ids(1, 64, generator)[0]
        words = [tokenizer().decode([int(t)]).strip() for t in codebook]
        patterns = tiled_patterns(64, size, 8, generator)
        picks = torch.stack([torch.randperm(64, generator=generator)[:3] for _ in range(n)])
        noise = patterns[picks].sum(1)
        captions = [" ".join(words[int(j)] for j in pick) + " " + c for pick, c in zip(picks, captions)]
    else:
        raise ValueError(name)
    noise = eps * noise.sign()
    return (images.float() + noise).clamp(0, 255).to(torch.uint8), captions, noise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=None, help=f"default: {','.join(SETS)} (scenes), {','.join(PHOTO_SETS)} (photo)")
    parser.add_argument("--style", choices=("scenes", "photo"), default="scenes")
    parser.add_argument("--difficulty", type=float, default=PHOTO_DIFFICULTY, help="photo style: the frozen level")
    parser.add_argument("--train", type=int, default=None, help="default: 2,000 (scenes), 8,000 (photo)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--victim", default="tiny-resnet")
    parser.add_argument("--eps", type=int, default=8)
    parser.add_argument("--work", default=str(ROOT / "bench" / "work"))
    parser.add_argument("--out", default=None, help="default: bench/results/shortcut_race[_photo].json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    photo = args.style == "photo"
    n_train = args.train or (8000 if photo else 2000)
    args.out = args.out or str(ROOT / "bench" / "results" / ("shortcut_race_photo.json" if photo else "shortcut_race.json"))
    data = Path(args.work) / (f"photo_d{args.difficulty}_{n_train}" if photo else "data")
    if not (data / "test").exists():
        write_demo_data(str(data), n_train, 500, size=64, seed=0, style=Style(args.style, args.difficulty))
    images, captions, _ = load_pairs(str(data / "train"), 64)
    test_images, test_captions, _ = load_pairs(str(data / "test"), 64)
    results = {"meta": {"host": platform.node(), "device": args.device, "torch": torch.__version__,
                        "victim": args.victim, "epochs": args.epochs, "eps": args.eps, "train": len(images),
                        "style": args.style, "difficulty": args.difficulty if photo else None,
                        "test": len(test_images), "date": time.strftime("%Y-%m-%d %H:%M:%S")}, "sets": []}
    names = (args.sets or ",".join(PHOTO_SETS if photo else SETS)).split(",")
    if Path(args.out).exists():  # keep the sets of earlier runs that this run does not redo
        results["sets"] = [e for e in json.loads(Path(args.out).read_text())["sets"] if e["set"] not in names]
    for name in names:
        generator = torch.Generator().manual_seed(0)
        hard = name.startswith("hard-")
        base, test_base = (harder(images, 1), harder(test_images, 2)) if hard else (images, test_images)
        train_images, train_captions, noise = plant(name.removeprefix("hard-"), base, captions, args.eps, generator)
        probe = (torch.full_like(images[:500], 128).float() + noise[:500]).clamp(0, 255).to(torch.uint8)
        tests = {"clean": (test_base, test_captions), "code": (probe, train_captions[:500])}
        started = time.time()
        run = train_victim(train_images, train_captions, VictimConfig(arch=args.victim, epochs=args.epochs), tests,
                           device=args.device)
        curve = [[e["clean"]["i2t_R@10"], e["clean"]["t2i_R@10"], e["code"]["i2t_R@10"], e["code"]["t2i_R@10"]]
                 for e in run.epochs]
        entry = {"set": name, "max_abs_noise": int(noise.abs().max()), "final_clean": curve[-1][:2],
                 "final_code": curve[-1][2:], "per_epoch_clean_and_code_R@10": curve, "loss_curve": run.loss_curve,
                 "seconds": round(time.time() - started, 1)}
        results["sets"].append(entry)
        print(f"{name:14s} clean R@10 {curve[-1][0]:5.1f}/{curve[-1][1]:5.1f}  code R@10 {curve[-1][2]:5.1f}/{curve[-1][3]:5.1f}"
              f"  ({entry['seconds']}s)", flush=True)
        write_result(Path(args.out), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
