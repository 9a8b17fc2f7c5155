"""Pretrain the public stand-in CLIPs of the fine-tuning regime (cached; a second call is instant).

Two open_clip families, a ViT and a ModifiedResNet, pretrained from scratch on the generated
web corpus (public shapes only, alt-text-like captions), saved as an open_clip model-config
JSON and a ``{"state_dict": ...}`` checkpoint. Writes bench/results/pretrain.json with the
paths, the pretraining curves, retrieval on held-out web pairs and each checkpoint's SHA-256.

    python bench/pretrain.py                               # both models, 20,000 pairs (CPU: ~15 min each)
    python bench/pretrain.py --models public-vit --epochs 6
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from mempipe.evaluation.public_models import pretrain  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402
import mempipe_research.models  # noqa: E402,F401  (registers the public stand-ins A, B, C)

CACHE = ROOT / "bench" / "work" / "public_models"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="public-vit,public-resnet")
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "pretrain.json"))
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in args.models.split(","):
        def show(entry, name=name):
            print(f"{name} epoch {entry['epoch']} loss {entry['train_loss']} web R@10 "
                  f"{entry['web_test']['i2t_R@10']}/{entry['web_test']['t2i_R@10']}", flush=True)

        record = pretrain(name, args.cache, show, pairs=args.pairs, epochs=args.epochs, seed=args.seed)
        record = {k: (str(Path(v).relative_to(ROOT)) if k in ("model_config", "checkpoint", "record") else v)
                  for k, v in record.items()}
        results[name] = record
        write_result(out, results)   # after each model: a stopped run keeps what finished
        print(json.dumps({name: {k: record[k] for k in ("checkpoint", "seconds", "web_test", "cached")}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
