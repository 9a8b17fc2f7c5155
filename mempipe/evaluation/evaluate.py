"""``mempipe eval``: train a victim on (protected) shards, test retrieval on clean data."""
from __future__ import annotations

import json
import os

from tqdm.auto import tqdm

from .datasets import NO_DEFENSE, Defense, load_pairs, prefix_random_words
from .victim import VictimConfig, train_victim

PREFIX_WORDS = 3


def load_eval_data(train_url: str, test_url: str, cfg: VictimConfig, defense: "str | Defense" = "none",
                   storage_options: dict | None = None):
    """(training images, training captions, test sets, victim config): the countermeasure applied
    to the training pairs (``crop`` becomes the victim's augmentation), the test split clean."""
    defense = Defense.parse(defense)
    if defense.kind == "crop":
        cfg = VictimConfig(**{**cfg.__dict__, "random_crop": True})
        defense = NO_DEFENSE
    train_images, train_captions, _ = load_pairs(train_url, cfg.image_size, defense, storage_options)
    test_images, test_captions, _ = load_pairs(test_url, cfg.image_size, NO_DEFENSE, storage_options)
    tests = {"clean": (test_images, test_captions),
             "prefixed": (test_images, prefix_random_words(test_captions, PREFIX_WORDS, seed=12345))}
    return train_images, train_captions, tests, cfg


def gains(final: dict, zero_shot: dict) -> dict:
    """R@10 points gained over the starting model, per test set and direction."""
    return {split: {d: round(final[split][f"{d}_R@10"] - zero_shot[split][f"{d}_R@10"], 2) for d in ("i2t", "t2i")}
            for split in final}


def checkpoint_epochs(epochs: int, count: int) -> list[int]:
    """``count`` epochs spread evenly along a fine-tune of ``epochs``, the last one included."""
    return sorted({max(1, round(epochs * (k + 1) / count)) for k in range(count)})


def checkpoint_saver(cfg: VictimConfig, count: int, out: str):
    """Saves the fine-tune at ``count`` evenly spread epochs as ``local-dir:`` folders under
    ``OUT/checkpoints``: the members of a self-ensemble (checkpoints along one model's fine-tune on
    the owner's data), each usable as ``--surrogate local-dir:FOLDER``."""
    from ..engine import names
    from .public_models import open_clip_config, save_local_dir

    if names.is_named(cfg.arch):
        config = names.model_config(cfg.arch)
    elif cfg.model_config:
        config = open_clip_config(json.loads(open(cfg.model_config).read()))
    else:
        raise ValueError("--save-checkpoints needs --init as an open_clip name or with --model-config")
    wanted = checkpoint_epochs(cfg.epochs, count)

    def save(epoch: int, model) -> None:
        if epoch in wanted:
            name = save_local_dir(model.clip.state_dict(), config, os.path.join(out, "checkpoints", f"epoch_{epoch}"))
            tqdm.write(f"checkpoint: {name}")
    return save


PROGRESS = ("bar", "lines", "off")   # a bar; a bar and a line per epoch; nothing


def run_victim(data, cfg: VictimConfig, device: str = "cpu", progress: str = "bar", after_epoch=None) -> dict:
    """One victim (``cfg``) on loaded data: final metrics, zero-shot metrics, gain and the curves."""
    train_images, train_captions, tests, _ = data
    per_epoch_lines = progress == "lines"
    bar = tqdm(total=cfg.epochs, desc=f"victim {cfg.arch}", unit="epoch", disable=progress == "off", leave=False)

    def on_epoch(entry: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=entry["train_loss"], i2t10=entry["clean"]["i2t_R@10"], t2i10=entry["clean"]["t2i_R@10"])
        if per_epoch_lines:
            bar.write(f"epoch {entry['epoch']:3d}  loss {entry['train_loss']:.4f}  clean R@10 "
                      f"{entry['clean']['i2t_R@10']:.1f}/{entry['clean']['t2i_R@10']:.1f}  prefixed R@10 "
                      f"{entry['prefixed']['i2t_R@10']:.1f}/{entry['prefixed']['t2i_R@10']:.1f}")

    run = train_victim(train_images, train_captions, cfg, tests, device=device, progress=on_epoch,
                       after_epoch=after_epoch)
    bar.close()
    final = {name: run.epochs[-1][name] for name in tests}
    return {"victim": cfg.__dict__, "n_train": len(train_captions), "n_test": len(tests["clean"][1]),
            "device": str(device), "final": final, "zero_shot": run.zero_shot, "gain_R@10": gains(final, run.zero_shot),
            "loss_curve": run.loss_curve, "epochs": run.epochs}


def evaluate(train_url: str, test_url: str, cfg: VictimConfig, defense: str = "none", device: str = "cpu",
             progress: str = "bar", storage_options: dict | None = None, after_epoch=None) -> dict:
    data = load_eval_data(train_url, test_url, cfg, defense, storage_options)
    result = run_victim(data, data[3], device, progress, after_epoch)
    return {**result, "defense": str(defense), "train": train_url, "test": test_url}


def summarize_seeds(results: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of every final, zero-shot and gain R@10."""
    import numpy as np

    out: dict = {"seeds": [r["victim"]["seed"] for r in results]}
    for key in ("final", "zero_shot", "gain_R@10"):
        out[key] = {}
        for split in results[0][key]:
            out[key][split] = {}
            for d in ("i2t", "t2i"):
                values = [r[key][split][d] if key == "gain_R@10" else r[key][split][f"{d}_R@10"] for r in results]
                out[key][split][d] = {"mean": round(float(np.mean(values)), 2),
                                      "sd": round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 2),
                                      "values": values}
    return out


def evaluate_seeds(train_url: str, test_url: str, cfg: VictimConfig, seeds: int, defense: str = "none",
                   device: str = "cpu", progress: str = "bar", storage_options: dict | None = None) -> dict:
    """``seeds`` victims (seeds cfg.seed, cfg.seed + 1, ...) on data loaded once."""
    data = load_eval_data(train_url, test_url, cfg, defense, storage_options)
    runs = [run_victim(data, VictimConfig(**{**data[3].__dict__, "seed": data[3].seed + i}), device, progress)
            for i in range(seeds)]
    return {"defense": str(defense), "train": train_url, "test": test_url, "runs": runs, "summary": summarize_seeds(runs)}


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


def victim_config(args) -> VictimConfig:
    """The victim of ``mempipe eval``: from scratch (``--victim``), or a fine-tune of ``--init``."""
    from ..engine.surrogate import PROJECT_MODELS, model_config_sizes

    from ..engine import names

    fields = dict(arch=args.victim, seed=args.seed, init=args.init, model_config=args.model_config, epochs=30)
    if args.init:   # the authors' fine-tune recipe: lr 1e-5 for 10 epochs
        fields.update(lr=1e-5, epochs=10, warmup_epochs=0.5)
        if names.is_named(args.init):   # ARCH:TAG, local-dir:DIR, hf-hub:ORG/REPO: the name brings its weights
            fields.update(arch=args.init, init=None, **{k: v for k, v in names.sizes(args.init).items() if k != "arch"})
        elif args.victim not in PROJECT_MODELS:   # released open_clip weights are trained at 224 px, 77 tokens
            fields.update(image_size=224, context_length=77)
    if args.model_config:
        fields.update(model_config_sizes(args.model_config))
    if args.lr is not None:
        fields["lr"] = args.lr
    if args.epochs is not None:
        fields["epochs"] = args.epochs
    if args.batch_size is not None:
        fields["batch_size"] = args.batch_size
    return VictimConfig(**fields)


COMPARE_ROWS = ("clean", "random noise", "protected")


def random_noise_copy(clean_url: str, protected_url: str, out_url: str) -> int:
    """The clean training set with uniform random noise of the protected set's epsilon, at its noise
    size: the control that any change of the pixels this large must beat. Returns the epsilon."""
    from ..engine.config import preset
    from ..io.provenance import default_record_url, read_run_record
    from ..run.driver import RunRequest, run
    from ..run.in_process import InProcess

    record = read_run_record(protected_url, default_record_url(protected_url), None)
    if record is None:
        raise ValueError(f"{protected_url} has no mempipe run record: --compare needs a protected output as --train")
    config = record["config"]
    noise = preset("cpu-tiny").with_overrides(method="random", epsilon=config["epsilon"], image_size=config["image_size"],
                                              noise_size=config.get("noise_size") or 0)
    written = run(RunRequest(clean_url, out_url, noise), InProcess("cpu"))
    if written.shards_failed:
        raise ValueError(f"could not write the random-noise control of {clean_url}: {written.shards_failed}")
    return config["epsilon"]


def compare(args, cfg: VictimConfig, device: str) -> dict:
    """``--compare CLEAN``: the victim fine-tuned on the clean set, on the clean set with random noise
    of the same epsilon, and on the protected set (``--train``); each gain and its share of clean's."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mempipe-compare-") as tmp:
        epsilon = random_noise_copy(args.compare, args.train, os.path.join(tmp, "random"))
        rows = {}
        for name, url in zip(COMPARE_ROWS, (args.compare, os.path.join(tmp, "random"), args.train)):
            result = evaluate(url, args.test, cfg, args.defense, device, "lines" if args.verbose else "bar")
            rows[name] = {"train": url if name != "random noise" else f"{args.compare} + uniform noise (eps {epsilon})",
                          "gain_R@10": result["gain_R@10"], "final": result["final"], "zero_shot": result["zero_shot"]}
    clean = rows["clean"]["gain_R@10"]["clean"]
    for row in rows.values():
        gain = row["gain_R@10"]["clean"]
        row["share_of_clean"] = {d: round(gain[d] / clean[d], 2) if clean[d] > 0 else None for d in ("i2t", "t2i")}
    return {"victim": cfg.__dict__, "epsilon": epsilon, "test": args.test, "defense": str(args.defense), "rows": rows}


def compare_table(result: dict) -> str:
    lines = ["training set      R@10 gain over zero-shot (i2t / t2i)   share of clean's gain",
             *(f"{name:16s}  {row['gain_R@10']['clean']['i2t']:6.1f} / {row['gain_R@10']['clean']['t2i']:<6.1f}"
               f"                      {row['share_of_clean']['i2t']} / {row['share_of_clean']['t2i']}"
               for name, row in result["rows"].items())]
    return "\n".join(lines)


def plot_compare(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    draw_compare(ax, result)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_compare(ax, result: dict) -> None:
    """Bars of R@10 gain per training set, both directions, on a matplotlib axis."""
    names = list(result["rows"])
    for j, (d, label) in enumerate((("i2t", "image -> text"), ("t2i", "text -> image"))):
        values = [result["rows"][n]["gain_R@10"]["clean"][d] for n in names]
        ax.bar([i + 0.38 * (j - 0.5) for i in range(len(names))], values, width=0.36, label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("R@10 gain over zero-shot")
    ax.set_title("what a fine-tune learns from each copy", fontsize=10)
    ax.legend(fontsize=8)


def main_eval(args) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    if args.model_config and not args.init:
        raise ValueError("--model-config names the architecture of --init CHECKPOINT: give both")
    args.defense = Defense.parse(args.defense)   # parsed once, before anything is written
    cfg = victim_config(args)
    if args.save_checkpoints and (args.seeds != 1 or args.compare or not args.init):
        raise ValueError("--save-checkpoints saves one fine-tune of --init: not with --seeds or --compare")
    os.makedirs(args.out, exist_ok=True)
    if args.compare:
        if not args.init:
            raise ValueError("--compare fine-tunes a pretrained model: give --init (a checkpoint or an open_clip name)")
        result = compare(args, cfg, device)
        with open(os.path.join(args.out, "compare.json"), "w") as f:
            json.dump(result, f, indent=2)
        plot_compare(result, os.path.join(args.out, "compare.png"))
        print(compare_table(result))
        print(json.dumps({"out": args.out, "share_of_clean": {n: r["share_of_clean"] for n, r in result["rows"].items()}}))
        return 0
    if args.seeds == 1:
        saver = checkpoint_saver(cfg, args.save_checkpoints, args.out) if args.save_checkpoints else None
        result = evaluate(args.train, args.test, cfg, args.defense, device, "lines" if args.verbose else "bar",
                          after_epoch=saver)
        plot_curves(result, os.path.join(args.out, "retrieval_curve.png"))
        shown = {"final": result["final"], "zero_shot": result["zero_shot"], "gain_R@10": result["gain_R@10"]}
    else:
        result = evaluate_seeds(args.train, args.test, cfg, args.seeds, args.defense, device,
                                "lines" if args.verbose else "bar")
        plot_curves(result["runs"][0], os.path.join(args.out, "retrieval_curve.png"))
        shown = {name: {split: {d: f"{v['mean']} +- {v['sd']}" for d, v in dirs.items()} for split, dirs in part.items()}
                 for name, part in result["summary"].items() if name != "seeds"}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({**shown, "out": args.out}))
    return 0
