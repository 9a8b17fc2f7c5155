"""The fine-tuning regime: public pretrained stand-ins fine-tuned on the owner's pairs.

The threat a data owner faces is a public pretrained CLIP fine-tuned on their scraped pairs.
Two public stand-ins (``bench/pretrain.py``: a ViT, model A, and a ModifiedResNet, model B)
are pretrained on the web corpus, which never shows the owner's shapes. The owner's data is
the photo style drawn from the other shapes, so zero-shot retrieval is low and fine-tuning has
something to learn. Every number is a fine-tuning gain: R@10 after fine-tuning minus R@10 of
the same public model before it (zero-shot), on the clean test split and on test captions with
3 random words in front.

Calibration (``bench/calibrate.py --regime finetune``) runs zero-shot, clean and the
random-words control (3 random words per caption, clean images, nothing optimised) for each
public model over the fine-tune's strength, 3 seeds each, and freezes the settings by these
rows alone, before any protected row exists:

- the image-noise question (protected images, original captions restored, against random noise
  of the same epsilon) is valid where clean gains at least 15 R@10 points in both directions;
- the trigger question (MEM as published, against the random-words control) is valid where, in
  addition, the control keeps at least 70 % of clean's gain in both directions.

The effectiveness rows (``bench/effectiveness.py --regime finetune``) then use the frozen
settings only: every method protects against model A (frozen), victims are A and B fine-tuned,
and a from-scratch victim for reference. A row differs from its control only when the gap of
the means exceeds twice the pooled standard deviation.
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

from mempipe.data.demo_data import write_demo_data  # noqa: E402
from mempipe.engine import preset  # noqa: E402
from mempipe.evaluation.datasets import prefix_random_words  # noqa: E402
from mempipe.evaluation.evaluate import load_eval_data, run_victim  # noqa: E402
from mempipe.evaluation.public_models import pretrain  # noqa: E402
from mempipe.evaluation.victim import VictimConfig  # noqa: E402
from mempipe_research.report import differs, stats  # noqa: E402,F401  (the 2-sd rule, shared)
from mempipe_research.results import write_result  # noqa: E402
import mempipe_research.models  # noqa: E402,F401  (registers the public stand-ins A, B, C)
from mempipe_research.owner_data import OWNER as OWNER_STYLE  # noqa: E402

WORK = ROOT / "bench" / "work" / "finetune"
RESULTS = ROOT / "bench" / "results"
CALIBRATION = RESULTS / "calibration_finetune.json"
EFFECTIVENESS = RESULTS / "effectiveness_finetune.json"
EFFECTIVENESS_AFTER_FREEZE = RESULTS / "effectiveness_finetune_after_freeze.json"
PUBLIC = {"A": "public-vit", "B": "public-resnet"}
PRETRAIN = {"pairs": 20_000, "epochs": 5, "seed": 0}           # bench/pretrain.py's defaults
# the calibration's other axes, beside A: its ViT pretrained twice as long, and a larger ViT. Clean and
# control only; the pick stays A's
AXES = {"A-10ep": ("public-vit", {"epochs": 10}), "A-wide": ("public-vit-wide", {})}
OWNER = {"train": 2000, "test": 500, "size": 32, "seed": 0, "style": "owner"}
# the fine-tune's strength: the authors' 10 epochs, learning rates from their 1e-5 (a 150 M-parameter
# ViT-B/32 fine-tuned on 30,000 pairs) up to a from-scratch rate, since a small model moves less per step
STRENGTHS = {"lr3e-4": {"lr": 3e-4, "epochs": 10}, "lr1e-3": {"lr": 1e-3, "epochs": 10},
             "lr3e-3": {"lr": 3e-3, "epochs": 10}}
# stronger fine-tunes (longer, or on more of the owner's pairs), calibrated (clean and control only) after
# the first freeze's protected rows had run: reported beside the others, never eligible for the first pick
AFTER_FREEZE = {"lr1e-3x30": {"lr": 1e-3, "epochs": 30},
                "lr1e-3-8k": {"lr": 1e-3, "epochs": 10, "train_pairs": 8000}}   # 4 times the owner's pairs
ALL_STRENGTHS = {**STRENGTHS, **AFTER_FREEZE}
VICTIM_BATCH = 32   # more steps for the same compute: a pilot learned more at 32 than at 64 (5.2 vs 3.0 points)
SEEDS = 3
CLEAN_GAIN_MIN = 15.0
CONTROL_SHARE_MIN = 0.70
SCRATCH = {"lr": 1e-3, "epochs": 20}


def model_spec(name: str) -> tuple[str, dict]:
    """(open_clip model name, pretraining overrides) of a public model or an axis."""
    return (PUBLIC[name], {}) if name in PUBLIC else AXES[name]


def public_models(names="AB") -> dict[str, dict]:
    """Public model (A, B or an axis of ``AXES``) -> paths of its pretrained stand-in (pretrained on
    first use, cached after)."""
    out = {}
    for name in names:
        arch, pretraining = model_spec(name)
        out[name] = pretrain(arch, str(ROOT / "bench" / "work" / "public_models"), **{**PRETRAIN, **pretraining})
    return out


# the stand-ins' checkpoints are bit-identical for one seed on one CPU, not across CPUs (float kernels
# differ in the last bits); each run records the build it used, and runs from before that field are
# on the first build
FIRST_BUILD = "3590d402d2d8-e2a2d0ca6747"


def build_id() -> str:
    """The build of the public models in the cache: the first 12 hex digits of A's and B's checkpoint SHA-256."""
    models = public_models("AB")
    return "-".join(models[letter]["checkpoint_sha256"][:12] for letter in "AB")


def build_of(entry: dict) -> str:
    return entry.get("build", FIRST_BUILD)


def sized(name: str, train: int | None) -> str:
    """A folder name per owner-set size: the default size keeps the plain name."""
    return name if (train or OWNER["train"]) == OWNER["train"] else f"{name}_{train}"


def owner_data(work: Path = WORK, train: int | None = None) -> dict[str, str]:
    """The owner's shards; a larger ``train`` keeps the same test split (and the smaller set as its start)."""
    train = train or OWNER["train"]
    data = work / sized("owner", train)
    if not (data / "test").exists():
        write_demo_data(str(data), train, OWNER["test"], size=OWNER["size"], seed=OWNER["seed"], style=OWNER_STYLE)
    return {"train": str(data / "train"), "test": str(data / "test")}


def victim_config(model: dict | None, strength: dict, seed: int) -> VictimConfig:
    """A fine-tune of a public model, or (``model`` None) a from-scratch victim of model A's architecture."""
    from mempipe.engine.surrogate import model_config_sizes

    strength = {k: v for k, v in strength.items() if k != "train_pairs"}   # the owner set's size, not the victim's
    if model is None:
        a = public_models("A")["A"]
        return VictimConfig(**model_config_sizes(a["model_config"]), seed=seed, model_config=a["model_config"],
                            batch_size=VICTIM_BATCH, **strength)
    return VictimConfig(**model_config_sizes(model["model_config"]), seed=seed, init=model["checkpoint"],
                        model_config=model["model_config"], warmup_epochs=0.5, batch_size=VICTIM_BATCH, **strength)


def random_words_data(data, seed: int):
    """The random-words control: 3 fresh random words in front of every training caption, clean images."""
    images, captions, tests, cfg = data
    return images, prefix_random_words(captions, 3, seed=1000 + seed), tests, cfg


def row_entry(result: dict, **labels) -> dict:
    per_epoch = (result["clean_R@10_per_epoch"] if result["epochs"] is None       # a calibration run, reused
                 else [[e["clean"]["i2t_R@10"], e["clean"]["t2i_R@10"]] for e in result["epochs"]])
    return {**labels, "zero_shot": result["zero_shot"], "final": result["final"], "gain": result["gain_R@10"],
            "loss_curve": result["loss_curve"], "clean_R@10_per_epoch": per_epoch}


def _append(path: Path, key: str, entry: dict, meta: dict, protection: dict | None = None) -> None:
    """Add one row to a partial result file (written after every row: a stopped run keeps it), with
    what the protect runs of its sets measured: the work folder is a cache, the file the record."""
    body = json.loads(path.read_text()) if path.exists() else {"meta": meta, key: []}
    body[key].append(entry)
    if protection:
        body.setdefault("protection", {}).update(protection)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_result(path, body)


def meta() -> dict:
    return {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "owner": OWNER, "public": PUBLIC, "pretrain": PRETRAIN,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


# ---------------------------------------------------------------- statistics

def gain_stats(rows: list[dict], split: str = "clean") -> dict[str, dict]:
    return {d: stats([r["gain"][split][d] for r in rows]) for d in ("i2t", "t2i")}


# ---------------------------------------------------------------- calibration

def calibrate(models: list[str], strengths: list[str], seeds: int | list[int], out: Path) -> None:
    paths, build = public_models(models), build_id()
    done = set()
    if out.exists():
        done = {(r["model"], r["strength"], r["condition"], r["seed"]) for r in json.loads(out.read_text())["runs"]
                if build_of(r) == build}
    # seed-major: a run cut short still has every strength at seed 0
    for seed in (range(seeds) if isinstance(seeds, int) else seeds):
        for letter in models:
            for strength in strengths:
                if all((letter, strength, c, seed) in done for c in ("clean", "random-words")):
                    continue
                data_urls = owner_data(train=ALL_STRENGTHS[strength].get("train_pairs"))
                base = load_eval_data(data_urls["train"], data_urls["test"],
                                      victim_config(paths[letter], ALL_STRENGTHS[strength], seed))
                for condition in ("clean", "random-words"):
                    if (letter, strength, condition, seed) in done:
                        continue
                    data = base if condition == "clean" else random_words_data(base, seed)
                    started = time.time()
                    result = run_victim(data, victim_config(paths[letter], ALL_STRENGTHS[strength], seed),
                                        progress="off")
                    entry = row_entry(result, model=letter, strength=strength, condition=condition, seed=seed,
                                      build=build, seconds=round(time.time() - started, 1))
                    _append(out, "runs", entry, meta())
                    g = entry["gain"]["clean"]
                    print(f"{letter} {strength:7s} {condition:12s} seed {seed}: zero-shot "
                          f"{result['zero_shot']['clean']['i2t_R@10']}/{result['zero_shot']['clean']['t2i_R@10']} "
                          f"gain {g['i2t']}/{g['t2i']} loss {entry['loss_curve'][-1]} ({entry['seconds']}s)", flush=True)


def judge(runs: list[dict]) -> dict:
    """Per public model and strength: clean's gain, the control's share of it, validity; and the pick."""
    table: dict = {}
    for letter in sorted({r["model"] for r in runs}):
        table[letter] = {}
        for strength in ALL_STRENGTHS:
            clean = [r for r in runs if (r["model"], r["strength"], r["condition"]) == (letter, strength, "clean")]
            control = [r for r in runs if (r["model"], r["strength"], r["condition"]) == (letter, strength, "random-words")]
            if not clean or not control:
                continue
            cg, kg = gain_stats(clean), gain_stats(control)
            shares = {d: round(kg[d]["mean"] / cg[d]["mean"], 3) if cg[d]["mean"] > 0 else None for d in cg}
            image_ok = all(cg[d]["mean"] >= CLEAN_GAIN_MIN for d in cg)
            table[letter][strength] = {
                "zero_shot": {d: clean[0]["zero_shot"]["clean"][f"{d}_R@10"] for d in cg},
                "clean_gain": cg, "control_gain": kg, "control_share": shares, "seeds": len(clean),
                "builds": len({build_of(r) for r in clean + control}),
                "after_freeze": strength in AFTER_FREEZE, "valid_image_noise": image_ok,
                "valid_trigger": image_ok and all(s is not None and s >= CONTROL_SHARE_MIN for s in shares.values()),
                "clean_final_loss": stats([r["loss_curve"][-1] for r in clean]),
                "control_final_loss": stats([r["loss_curve"][-1] for r in control])}
    return table


def pick(table: dict, after_freeze: bool = False) -> dict:
    """The frozen settings, by the calibration rows alone: per question, the strength valid for the
    same-model victim (A) with the largest clean gain; with none valid, the largest clean gain (a finding).
    ``after_freeze`` picks among the later strengths only, by the same rule (the second freeze)."""
    rows = {s: v for s, v in table.get("A", {}).items() if bool(v.get("after_freeze")) == after_freeze}

    def clean_gain(s):
        return min(rows[s]["clean_gain"][d]["mean"] for d in ("i2t", "t2i"))

    frozen = {}
    for question in ("image_noise", "trigger"):
        valid = [s for s in rows if rows[s][f"valid_{question}"]]
        choice = max(valid or rows, key=clean_gain) if rows else None
        frozen[question] = {"strength": choice, **(ALL_STRENGTHS[choice] if choice else {}), "valid": bool(valid),
                            "rule": ("the valid strength with the largest clean gain" if valid else
                                     "no valid strength: the largest clean gain, reported as a finding"),
                            "valid_for_B": table.get("B", {}).get(choice, {}).get(f"valid_{question}")}
    return frozen


def plot_calibration(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(5 * len(table), 3.6), squeeze=False)
    for ax, (letter, rows) in zip(axes[0], table.items()):
        names = list(rows)
        x = np.arange(len(names))
        for offset, (key, label) in enumerate((("clean_gain", "clean"), ("control_gain", "random-words control"))):
            for j, d in enumerate(("i2t", "t2i")):
                means = [rows[s][key][d]["mean"] for s in names]
                sds = [rows[s][key][d]["sd"] or 0 for s in names]
                ax.bar(x + (offset * 2 + j - 1.5) * 0.2, means, 0.2, yerr=sds, label=f"{label} {d}")
        ax.axhline(CLEAN_GAIN_MIN, color="gray", ls="--", lw=1, label="15-point bar")
        ax.set_xticks(x, names)
        arch, pretraining = model_spec(letter)
        ax.set_title(f"public model {letter} ({arch}{', ' + str(pretraining) if pretraining else ''}): fine-tuning gain",
                     fontsize=9)
        ax.set_ylabel("R@10 gain over zero-shot (points)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def calibrate_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="calibrate.py --regime finetune")
    ap.add_argument("--regime", default="finetune")
    ap.add_argument("--models", default="A,B")
    ap.add_argument("--strengths", default=",".join(STRENGTHS), help=f"from {list(ALL_STRENGTHS)}")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "partial" / "calibration_finetune_runs.json"))
    ap.add_argument("--seed", type=int, help="run this seed only (two processes can share the seeds)")
    ap.add_argument("--judge", help="comma-separated run files -> calibration_finetune.json, its plot, the pick")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.judge:
        runs = [r for p in args.judge.split(",") for r in json.loads(Path(p).read_text())["runs"]]
        table = judge(runs)
        if any(v["seeds"] < SEEDS for rows in table.values() for v in rows.values()):
            print("warning: some rows have fewer than 3 seeds", file=sys.stderr)
        body = {"meta": meta(), "criteria": {"clean_gain_min": CLEAN_GAIN_MIN, "control_share_min": CONTROL_SHARE_MIN},
                "strengths": STRENGTHS, "after_freeze": AFTER_FREEZE,
                "axes": {name: {"arch": arch, **PRETRAIN, **pretraining} for name, (arch, pretraining) in AXES.items()},
                "table": table, "frozen": pick(table),
                "frozen_after": pick(table, after_freeze=True), "runs": runs}
        write_result(CALIBRATION, body)
        plot_calibration(table, RESULTS / "calibration_finetune.png")
        print(json.dumps({"frozen": body["frozen"], "frozen_after": body["frozen_after"]}, indent=1))
        return 0
    calibrate(args.models.split(","), args.strengths.split(","), args.seeds if args.seed is None else [args.seed],
              Path(args.out))
    return 0


# ---------------------------------------------------------------- protection and the method table

# every method protects against model A, frozen: the finetune preset, scaled for a CPU (see docs/effectiveness.md)
CPU_SCALE = {"outer_iters": 5, "pgd_steps": 4, "train_steps": 0, "unit_train_steps": 0, "unit_size": 1000,
             "clusters": 10}
VARIANTS = {
    "random": {"method": "random"},
    "em": {"method": "em"},
    "uc": {"method": "uc"},
    "mem3": {"method": "mem", "trigger_len": 3, "trigger_scope": "sample"},
    "mem5": {"method": "mem", "trigger_len": 5, "trigger_scope": "sample"},
    "mem3-cluster": {"method": "mem", "trigger_len": 3, "trigger_scope": "cluster"},
    "mem3-global": {"method": "mem", "trigger_len": 3, "trigger_scope": "global"},
}
TRIGGERED = ("mem3", "mem5", "mem3-cluster", "mem3-global")
# row -> (images from, captions from, countermeasure, question, what it shows); captions "random-words*" are controls
ROWS = {
    "clean": ("clean", "clean", "none", "both", "reference: the owner's clean pairs"),
    "random": ("random", "clean", "none", "image_noise", "control: uniform noise in [-eps, eps], original captions"),
    "em": ("em", "clean", "none", "image_noise", "error-minimising noise against model A, no trigger"),
    "uc": ("uc", "clean", "none", "image_noise", "one error-minimising noise per cluster (UC-style)"),
    **{f"{v}+orig": (v, "clean", "none", "image_noise", f"{v}'s images with the original captions restored")
       for v in TRIGGERED},
    **{v: (v, v, "none", "trigger", f"{v} as published: noise and trigger") for v in TRIGGERED},
    "trigger-only": ("clean", "mem3", "none", "trigger", "ablation: MEM-3's captions, original images"),
    "cluster-trigger-only": ("clean", "mem3-cluster", "none", "trigger",
                             "ablation: MEM-3-cluster's captions, original images"),
    "random-words": ("clean", "random-words", "none", "trigger", "control: 3 random words per caption, clean images"),
    "random-words-cluster": ("clean", "random-words-cluster", "none", "trigger",
                             "control for mem3-cluster: its trigger groups, 3 random words each, clean images"),
    "random-words-global": ("clean", "random-words-global", "none", "trigger",
                            "control for mem3-global: one random triple before every caption, clean images"),
    "em+jpeg75": ("em", "clean", "jpeg:75", "image_noise", "countermeasure: EM's images re-encoded as JPEG 75"),
    "em+grayscale": ("em", "clean", "grayscale", "image_noise", "countermeasure: EM's images in grayscale"),
    "clean+jpeg75": ("clean", "clean", "jpeg:75", "image_noise", "countermeasure's own cost: clean, JPEG 75"),
    "clean+grayscale": ("clean", "clean", "grayscale", "image_noise", "countermeasure's own cost: clean, grayscale"),
}
COUNTERMEASURES = ("jpeg:75", "grayscale")
# each row's control, for the 2-sd rule
CONTROL_OF = {"em": "random", "em+jpeg75": "clean+jpeg75", "em+grayscale": "clean+grayscale", "uc": "random", **{f"{v}+orig": "random" for v in TRIGGERED}, "mem3": "random-words",
              "mem5": "random-words", "trigger-only": "random-words", "mem3-cluster": "random-words-cluster",
              "cluster-trigger-only": "random-words-cluster",
              "mem3-global": "random-words-global"}


def engine_config(model_a: dict, overrides: dict):
    from mempipe.engine.surrogate import with_model_config

    return with_model_config(preset("finetune").with_overrides(
        checkpoint=model_a["checkpoint"], model_config=model_a["model_config"], **{**CPU_SCALE, **overrides}))


def protected_dir(work: Path = WORK, train: int | None = None) -> Path:
    return work / sized("protected", train)


def sets_used(rows) -> set[str]:
    """The protected sets that these rows read: their images or captions, and the trigger groups
    that a cluster control copies."""
    used = {s for r in rows for s in ROWS[r][:2] if s in VARIANTS}
    return used | ({"mem3-cluster"} if any(ROWS[r][1] == "random-words-cluster" for r in rows) else set())


def protected_sets(names: set[str], work: Path = WORK, train: int | None = None) -> dict[str, dict]:
    """Protect the owner's training shards with each needed variant through the local runner."""
    from mempipe.evaluation.inspect_output import summarize
    from mempipe.run.in_process import protect

    model_a, clean = public_models("A")["A"], owner_data(work, train)["train"]
    out: dict[str, dict] = {}
    for name in sorted(names):
        target = protected_dir(work, train) / name
        record = protect(clean, str(target), engine_config(model_a, VARIANTS[name]), "png").to_dict()
        info_path = target.parent / f"{name}.info.json"
        if record["shards_written"]:
            info = summarize(str(target), clean)
            info = {"seconds": record["seconds"], "max_delta": info["max_delta"], "psnr": info["psnr_mean"],
                    "ssim": info["ssim_mean"], "distinct_triggers": info["distinct_triggers"],
                    "config": record["config"]}
            info_path.write_text(json.dumps(info, indent=1))
            print(f"protected {name}: {info['seconds']}s max|d|={info['max_delta']} psnr={info['psnr']}", flush=True)
        out[name] = {"url": str(target), "info": json.loads(info_path.read_text())}
    return out


def _group_random_words(captions: list[str], triggered: list[str], seed: int, k: int = 3) -> list[str]:
    """Each distinct trigger of a shared-trigger set becomes k random words, the same for every
    caption that shared it: the grouping and caption format kept, nothing optimised."""
    from mempipe.evaluation.datasets import random_words

    triggers = [" ".join(t.split()[:k]) for t in triggered]
    table = {t: w for t, w in zip(sorted(set(triggers)), random_words(len(set(triggers)), k, seed=seed + 77))}
    return [f"{table[t]} {c}" for t, c in zip(triggers, captions)]


def training_data(row: str, sets: dict, cfg: VictimConfig, seed: int, cache: dict, train: int | None = None):
    """(images, captions, tests, cfg) of a row, aligned by key. Each (set, countermeasure) is read once
    per cache, and the test split once."""
    from mempipe.evaluation.datasets import load_pairs

    images_from, captions_from, defense, _, _ = ROWS[row]
    urls = owner_data(train=train)

    def pairs(name: str, defense_: str = "none"):   # (images, captions, keys)
        if (name, defense_) not in cache:
            url = urls["train"] if name == "clean" else sets[name]["url"]
            cache[(name, defense_)] = load_pairs(url, cfg.image_size, defense_)
        return cache[(name, defense_)]

    if "tests" not in cache:
        cache["tests"] = load_eval_data(urls["train"], urls["test"], cfg)[2]
    images, _, keys = pairs(images_from, defense)
    if captions_from.startswith("random-words"):
        clean = pairs("clean")
        by_key = dict(zip(clean[2], clean[1]))
        clean_caps = [by_key[k] for k in keys]
        if captions_from == "random-words":
            captions = prefix_random_words(clean_caps, 3, seed=1000 + seed)
        elif captions_from == "random-words-global":
            captions = _group_random_words(clean_caps, ["global"] * len(keys), seed)
        else:
            source = pairs("mem3-cluster")
            triggered = dict(zip(source[2], source[1]))
            captions = _group_random_words(clean_caps, [triggered[k] for k in keys], seed)
    else:
        source = pairs(captions_from)
        captions_by_key = dict(zip(source[2], source[1]))
        captions = [captions_by_key[k] for k in keys]
    return images, captions, cache["tests"], cfg


def calibration_run(runs: list[dict], row: str, victim: str, strength: str, seed: int, build: str) -> dict | None:
    """The calibration's own run of a clean or random-words row: the same settings, seed and build give
    the same numbers (checked: the first freeze's three clean seeds are identical in both files)."""
    if row not in ("clean", "random-words"):
        return None
    return next((r for r in runs if (r["model"], r["strength"], r["condition"], r["seed"], build_of(r))
                 == (victim, strength, row, seed, build)), None)


def effectiveness(rows: list[str], victims: list[str], seeds: int | list[int], out: Path,
                  after_freeze: bool = False) -> None:
    calibration = json.loads(CALIBRATION.read_text())
    frozen = calibration["frozen_after" if after_freeze else "frozen"]
    train = {ALL_STRENGTHS[f["strength"]].get("train_pairs") for f in frozen.values()}
    if len(train) > 1:
        raise SystemExit(f"the two questions froze different owner sets {train}: run them one at a time")
    train = train.pop()
    sets = protected_sets(sets_used(rows), train=train)
    records = {name: s["info"] for name, s in sets.items()}   # what each protect run measured, kept with the rows
    file_meta = {"engine": engine_config(public_models("A")["A"], {}).to_dict(), "frozen": frozen}
    models, build = public_models("".join(v for v in victims if v in PUBLIC) or "A"), build_id()
    done = set()
    if out.exists():
        done = {(r["row"], r["victim"], r["seed"]) for r in json.loads(out.read_text())["rows"] if build_of(r) == build}
    for seed in (range(seeds) if isinstance(seeds, int) else seeds):
        for victim in victims:
            cache: dict = {}
            for row in rows:
                question = ROWS[row][3]
                strengths = ({frozen["image_noise"]["strength"], frozen["trigger"]["strength"]} if question == "both"
                             else {frozen[question]["strength"]})
                for strength in sorted(strengths):
                    label = row if len(strengths) == 1 else f"{row}@{strength}"
                    if (label, victim, seed) in done:
                        continue
                    cfg = (victim_config(None, SCRATCH, seed) if victim == "scratch"
                           else victim_config(models[victim], ALL_STRENGTHS[strength], seed))
                    started = time.time()
                    reused = calibration_run(calibration["runs"], row, victim, strength, seed, build)
                    if reused:
                        result = {**reused, "gain_R@10": reused["gain"], "epochs": None}
                    else:
                        result = run_victim(training_data(row, sets, cfg, seed, cache, train), cfg, progress="off")
                    entry = row_entry(result, row=label, base_row=row, victim=victim, seed=seed, strength=strength,
                                      defense=ROWS[row][2], what=ROWS[row][4], from_calibration=bool(reused), build=build,
                                      seconds=reused["seconds"] if reused else round(time.time() - started, 1))
                    _append(out, "rows", entry, {**meta(), **file_meta}, records)
                    g, p = entry["gain"]["clean"], entry["gain"]["prefixed"]
                    print(f"{victim:7s} {label:22s} seed {seed}: gain clean {g['i2t']}/{g['t2i']} prefixed "
                          f"{p['i2t']}/{p['t2i']} loss {entry['loss_curve'][-1]} ({entry['seconds']}s)", flush=True)


def report(parts: list[Path]) -> dict:
    """Join partial row files: mean +- sd per (victim, row), each row's share of clean's gain, the
    2-sd verdict against its control, and the goal's bars."""
    rows, protection, meta_ = [], {}, {}
    for p in parts:   # what each protect run measured, as its rows' file recorded it (a later file wins)
        body = json.loads(p.read_text())
        rows += body["rows"]
        meta_ = body.get("meta", meta_)   # a file of protect records alone has no rows and no meta
        protection.update(body.get("protection", {}))
    missing = sets_used({r["base_row"] for r in rows}) - set(protection)
    if missing:
        raise SystemExit(f"no protect record for {sorted(missing)} in the row files given")
    table: dict = {}
    for victim in sorted({r["victim"] for r in rows}):
        table[victim] = {}
        for label in dict.fromkeys(r["row"] for r in rows if r["victim"] == victim):
            runs = [r for r in rows if (r["victim"], r["row"]) == (victim, label)]
            table[victim][label] = {"what": runs[0]["what"], "strength": runs[0]["strength"], "seeds": len(runs),
                                    "builds": len({build_of(r) for r in runs}),
                                    **{split: gain_stats(runs, split) for split in ("clean", "prefixed")},
                                    "final_loss": stats([r["loss_curve"][-1] for r in runs])}
        for label, entry in table[victim].items():
            base = label.split("@")[0]
            clean = table[victim].get("clean") or table[victim].get(f"clean@{entry['strength']}")
            if clean:
                entry["share_of_clean"] = {split: {d: round(entry[split][d]["mean"] / clean[split][d]["mean"], 3)
                                                   if clean[split][d]["mean"] > 0 else None for d in ("i2t", "t2i")}
                                           for split in ("clean", "prefixed")}
            control = table[victim].get(CONTROL_OF.get(base, ""))
            if control:
                entry["control"] = CONTROL_OF[base]
                entry["differs_from_control"] = {split: {d: differs(entry[split][d], control[split][d])
                                                         for d in ("i2t", "t2i")} for split in ("clean", "prefixed")}
    return {"meta": meta_, "protection": protection, "table": table, "goal": goal(table, meta_["frozen"]), "rows": rows}


def plot_curves(rows: list[dict], path: Path) -> None:
    """Per victim: each row's training loss and clean test R@10 (i2t) per epoch, averaged over its runs.
    A protection shows as a loss far below clean's with a test curve that stays near zero-shot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    victims = sorted({r["victim"] for r in rows})
    fig, axes = plt.subplots(2, len(victims), figsize=(5 * len(victims), 7), squeeze=False)
    for col, victim in enumerate(victims):
        mine = [r for r in rows if r["victim"] == victim and r["defense"] == "none"]
        for label in dict.fromkeys(r["row"] for r in mine):
            runs = [r for r in mine if r["row"] == label]
            loss = np.mean([r["loss_curve"] for r in runs], axis=0)
            test = np.mean([[e[0] for e in r["clean_R@10_per_epoch"]] for r in runs], axis=0)
            style = "--" if label in CONTROL_OF.values() or label == "clean" else "-"
            axes[0][col].plot(range(1, len(loss) + 1), loss, style, label=f"{label} ({len(runs)})")
            axes[1][col].plot(range(1, len(test) + 1), test, style, label=label)
        axes[0][col].set_title(f"victim {victim}: training loss"), axes[0][col].set_xlabel("epoch")
        axes[1][col].set_title(f"victim {victim}: clean test R@10, image to text"), axes[1][col].set_xlabel("epoch")
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def goal(table: dict, frozen: dict) -> dict:
    """The bars: the best image-noise row keeps at most 20 % of clean's gain (clean and prefixed test
    captions) while random noise keeps at least 80 %; the best trigger row at most 20 % while the
    random-words control keeps at least 70 %."""
    out = {}
    for victim, rows in table.items():
        def worst_share(label):
            shares = rows.get(label, {}).get("share_of_clean")
            return None if not shares else max(v for split in shares.values() for v in split.values() if v is not None)

        def best_share(label):
            shares = rows.get(label, {}).get("share_of_clean")
            return None if not shares else min(v for split in shares.values() for v in split.values() if v is not None)

        image_rows = [r for r in rows if r.split("@")[0] in ("em", "uc") or r.endswith("+orig")]
        trigger_rows = [r for r in rows if r.split("@")[0] in TRIGGERED]
        best_image = min(image_rows, key=lambda r: worst_share(r) or 9, default=None)
        best_trigger = min(trigger_rows, key=lambda r: worst_share(r) or 9, default=None)
        image_bars = bool(best_image and worst_share(best_image) is not None and worst_share(best_image) <= 0.2
                          and (best_share("random") or 0) >= 0.8)
        trigger_bars = bool(best_trigger and worst_share(best_trigger) is not None
                            and worst_share(best_trigger) <= 0.2 and (best_share("random-words") or 0) >= 0.7)
        # the bars count only where calibration called the question valid: a share of a gain too small
        # to measure is not protection
        out[victim] = {
            "image_noise": {"best": best_image, "its_largest_share": worst_share(best_image) if best_image else None,
                            "random_smallest_share": best_share("random"), "bars_met": image_bars,
                            "regime_valid": bool(frozen["image_noise"]["valid"]),
                            "met": image_bars and bool(frozen["image_noise"]["valid"])},
            "trigger": {"best": best_trigger, "its_largest_share": worst_share(best_trigger) if best_trigger else None,
                        "control_smallest_share": best_share("random-words"), "bars_met": trigger_bars,
                        "regime_valid": bool(frozen["trigger"]["valid"]),
                        "met": trigger_bars and bool(frozen["trigger"]["valid"])}}
    return out


def effectiveness_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="effectiveness.py --regime finetune")
    ap.add_argument("--regime", default="finetune")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--victims", default="A,B,scratch")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "partial" / "effectiveness_finetune_rows.json"))
    ap.add_argument("--report", help="comma-separated row files -> effectiveness_finetune.json")
    ap.add_argument("--seed", type=int, help="run this seed only (two processes can share the seeds)")
    ap.add_argument("--after-freeze", action="store_true",
                    help="run the rows at the second freeze (the stronger fine-tunes calibrated later)")
    ap.add_argument("--protect-only", action="store_true",
                    help="protect every variant and stop (no victim; safe before calibration is frozen)")
    ap.add_argument("--train-pairs", type=int, help="with --protect-only: the owner set of this size")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="with --protect-only: these variants")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.protect_only:
        protected_sets(set(args.variants.split(",")), train=args.train_pairs)
        return 0
    if args.report:
        body = report([Path(p) for p in args.report.split(",")])
        target = EFFECTIVENESS_AFTER_FREEZE if args.after_freeze else EFFECTIVENESS
        write_result(target, body)
        plot_curves(body["rows"], target.with_suffix(".png"))
        print(json.dumps(body["goal"], indent=1))
        return 0
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; choose from {list(ROWS)}")
    effectiveness(args.rows.split(","), args.victims.split(","), args.seeds if args.seed is None else [args.seed],
                  Path(args.out), args.after_freeze)
    return 0
