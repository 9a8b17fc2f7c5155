"""``mempipe eval``: train a victim on (protected) shards, test retrieval on clean data."""
from __future__ import annotations

import json
import os

from tqdm.auto import tqdm

from .datasets import load_pairs, prefix_random_words
from .victim import VictimConfig, train_victim

PREFIX_WORDS = 3


def evaluate(train_url: str, test_url: str, cfg: VictimConfig, defense: str = "none", device: str = "cpu",
             show_progress: bool = True, storage_options: dict | None = None, per_epoch_lines: bool = False) -> dict:
    from .datasets import check_defense

    check_defense(defense)
    if defense == "crop":
        cfg = VictimConfig(**{**cfg.__dict__, "random_crop": True})
        data_defense = "none"
    else:
        data_defense = defense
    train_images, train_captions, _ = load_pairs(train_url, cfg.image_size, data_defense, storage_options)
    test_images, test_captions, _ = load_pairs(test_url, cfg.image_size, "none", storage_options)
    tests = {"clean": (test_images, test_captions),
             "prefixed": (test_images, prefix_random_words(test_captions, PREFIX_WORDS, seed=12345))}
    bar = tqdm(total=cfg.epochs, desc=f"victim {cfg.arch}", unit="epoch", disable=not show_progress, leave=False)

    def on_epoch(entry: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=entry["train_loss"], i2t10=entry["clean"]["i2t_R@10"], t2i10=entry["clean"]["t2i_R@10"])
        if per_epoch_lines:
            bar.write(f"epoch {entry['epoch']:3d}  loss {entry['train_loss']:.4f}  clean R@10 "
                      f"{entry['clean']['i2t_R@10']:.1f}/{entry['clean']['t2i_R@10']:.1f}  prefixed R@10 "
                      f"{entry['prefixed']['i2t_R@10']:.1f}/{entry['prefixed']['t2i_R@10']:.1f}")

    run = train_victim(train_images, train_captions, cfg, tests, device=device, progress=on_epoch)
    bar.close()
    final = run.epochs[-1]
    return {"victim": cfg.__dict__, "defense": defense, "train": train_url, "test": test_url,
            "n_train": len(train_captions), "n_test": len(test_captions), "device": str(device),
            "final": {"clean": final["clean"], "prefixed": final["prefixed"]},
            "loss_curve": run.loss_curve, "epochs": run.epochs}


def plot_curves(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in result["epochs"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(epochs, result["loss_curve"])
    a.set_xlabel("epoch"), a.set_ylabel("train loss"), a.set_title("victim training loss")
    for split in ("clean", "prefixed"):
        for d in ("i2t", "t2i"):
            b.plot(epochs, [e[split][f"{d}_R@10"] for e in result["epochs"]], label=f"{split} {d}")
    b.axhline(result["epochs"][0]["clean"]["chance_R@10"], color="gray", ls="--", label="chance")
    b.set_xlabel("epoch"), b.set_ylabel("R@10 (%)"), b.set_title("retrieval on the clean test split"), b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main_eval(args) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = VictimConfig(arch=args.victim, epochs=args.epochs, seed=args.seed)
    result = evaluate(args.train, args.test, cfg, args.defense, device, per_epoch_lines=args.verbose)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot_curves(result, os.path.join(args.out, "retrieval_curve.png"))
    print(json.dumps({"final": result["final"], "out": args.out}))
    return 0
