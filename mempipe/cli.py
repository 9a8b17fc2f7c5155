"""The ``mempipe`` command line: protect, demo-data, demo-model, ingest, eval, inspect. One parser serves every entry point."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


from .engine.config import PRESET_THREATS, PRESETS, PRETRAINED_PRESETS, MEMConfig, preset, read_settings
from .io.retry import StorageError
from .io.storage import parse_storage_options


CLI_ONLY_THROUGH_SURROGATE = ("surrogate", "ensemble")   # set by --surrogate (names and the mode)
EXIT_SHARDS_FAILED = 3  # the run went on, but some shards could not be protected (retry them by rerunning)


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """One option per engine setting, made from MEMConfig's fields: the same names, types, choices and
    help as the config file; bounds are checked by MEMConfig itself, so the two cannot drift."""
    group = p.add_argument_group("engine settings (each defaults to the preset's value)")
    group.add_argument("--surrogate", dest="surrogates", action="append", default=None, metavar="NAME",
                       help="the surrogate, named as open_clip names models: ARCH:TAG (ViT-B-32:openai, downloaded "
                            "and cached by open_clip), local-dir:DIR (open_clip_config.json and weights), "
                            "hf-hub:ORG/REPO, or ARCH (from scratch). Repeat for an ensemble: the noise is made "
                            "against all of them (--ensemble-reduce). 'shared' or 'per-unit' set the surrogate "
                            "mode instead (shared: one surrogate per run; per-unit: each unit trains its own)")
    for name, kind, choices, text in MEMConfig.field_specs():
        if name in CLI_ONLY_THROUGH_SURROGATE:
            continue
        defaults = "; ".join(f"{preset_name}: {getattr(cfg, name)}" for preset_name, cfg in sorted(PRESETS.items()))
        flag = "--" + name.replace("_", "-")
        help_text = f"{text} ({defaults})"
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_text,
                               metavar=None if choices else name.upper())


def add_protect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="input shards: folder, s3://bucket/prefix, or a brace pattern")
    p.add_argument("output", help="output prefix (never the input)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="engine settings to start from, by what they protect against: "
                        + "; ".join(f"{name}: {PRESET_THREATS[name]}" for name in sorted(PRESETS))
                        + " (default: finetune-thief-trigger with a pretrained surrogate, cpu-tiny without)")
    p.add_argument("--config", help="YAML/JSON file of engine settings (the names below, with underscores) that "
                                    "override the preset; command-line options override both")
    p.add_argument("--storage-options", help="fsspec storage options as JSON (credentials are never logged)")
    p.add_argument("--partition", choices=("cluster", "shard"), default="shard",
                   help="work units: each shard's samples, or class-agnostic clusters fitted once and packed "
                        "within windows of shards (default: %(default)s)")
    add_engine_arguments(p)
    p.add_argument("--image-format", default="png",
                   help="keep | png | webp (lossless) | jpeg:Q; keep writes JPEG inputs as PNG (default: %(default)s)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--num-actors", type=int, default=None, help=f"MEM actors in the Ray pool (default: {NUM_ACTORS})")
    p.add_argument("--gpus-per-actor", type=float, default=None,
                   help="GPUs per MEM actor and for the fit task; 0 = CPU actors (default: 0)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local Ray)")
    p.add_argument("--no-ray", action="store_true",
                   help=f"run in this process, without Ray (the default for an input of at most {SMALL_RUN_SHARDS} "
                        "shards when no Ray setting is given: a small run does not pay for starting a cluster)")
    p.add_argument("--record", help="the owner's private record: triggers, clusters, per-sample measures "
                   "(default: OUTPUT_mempipe_record beside the output; never publish it)")
    p.add_argument("--provenance", choices=("public", "full"), default="public",
                   help="public: shards carry only method, epsilon, version and run id; full: everything (research)")
    p.add_argument("--window", type=int, default=None,
                   help="input shards per work item (default: 1 with --partition shard, 8 with --partition cluster)")
    p.add_argument("--new-run", action="store_true",
                   help="protect into a new output version (OUTPUT.v2, .v3, ...) instead of refusing settings that "
                        "differ from the ones this output was protected with")
    p.add_argument("--break-lock", action="store_true",
                   help="remove the output's lock left by a run that is gone (a lock of a dead process on this host "
                        "is taken over without it)")
    p.add_argument("--max-member-mb", type=float, default=None,
                   help="largest tar member accepted, in MiB (default 64); larger ones are recorded as failed")
    p.add_argument("--max-shard-mb", type=float, default=None,
                   help="member bytes held for one shard, in MiB (default 4096)")
    p.add_argument("--max-shard-megapixels", type=float, default=None,
                   help="decoded pixels for one shard, in millions (default 2000); images past it are recorded as failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="Ray's own logs, operator tables and worker output")


NUM_ACTORS = 2
SMALL_RUN_SHARDS = 2


def small_run(args: argparse.Namespace, storage_options: dict) -> bool:
    """Whether ``protect`` runs in this process on its own: no Ray setting given (actors, GPUs, an
    address) and an input of at most SMALL_RUN_SHARDS shards (one listing tells)."""
    from .io.shards import list_shards

    if args.num_actors is not None or args.gpus_per_actor is not None or args.ray_address or os.environ.get("RAY_ADDRESS"):
        return False
    return len(list_shards(args.input, storage_options)) <= SMALL_RUN_SHARDS


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="mempipe", description="Make image-caption webdataset shards unlearnable (MEM).")
    parser.add_argument("--version", action="version", version=f"mempipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-data", help="write procedural demo shards (OUT/train, OUT/test)")
    demo.add_argument("out")
    demo.add_argument("--train", type=int, required=True)
    demo.add_argument("--test", type=int, required=True)
    demo.add_argument("--size", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--style", choices=("scenes", "photo", "web"), default="scenes",
                      help="scenes: flat shapes, learned fast; photo: 1/f clutter, shape-only identity, learned "
                           "slowly; web: the public stand-ins' alt-text-like pretraining corpus")
    demo.add_argument("--difficulty", type=float, default=None,
                      help="photo style only: the nuisance knob in [0, 1] (default: the calibrated value)")
    demo.add_argument("--captions-per-image", type=int, default=1,
                      help="photo style only: train pairs come in runs sharing one image, n captions each "
                           "(Flickr8K and COCO have 5); the test split keeps one caption per image")
    demo.add_argument("--storage-options")

    stand_in = sub.add_parser("demo-model", help="pretrain the demo's tiny public CLIP stand-in (seconds, cached) "
                                                 "into OUT/model, an open_clip local-dir folder")
    stand_in.add_argument("out")

    add_protect_arguments(sub.add_parser("protect", help="protect shards with MEM or a baseline"))

    ev = sub.add_parser("eval", help="train a victim CLIP on shards, test retrieval on clean data")
    ev.add_argument("--train", required=True)
    ev.add_argument("--test", required=True)
    ev.add_argument("--victim", default="tiny-resnet",
                    help="architecture trained from scratch, or of --init (default: %(default)s)")
    ev.add_argument("--init", metavar="CHECKPOINT",
                    help="fine-tune this public pretrained CLIP instead of training from scratch: an open_clip "
                         "checkpoint file, or an open_clip name (ARCH:TAG, local-dir:DIR, hf-hub:ORG/REPO); "
                         "reports zero-shot retrieval, the fine-tuned one and the gain")
    ev.add_argument("--compare", metavar="CLEAN_TRAIN",
                    help="with --train a protected output: fine-tune on the clean set, on it with random noise of "
                         "the same epsilon, and on the protected set; prints the three gains and writes "
                         "OUT/compare.json and OUT/compare.png")
    ev.add_argument("--model-config", metavar="FILE", help="open_clip model-config JSON of --init")
    ev.add_argument("--save-checkpoints", type=int, default=0, metavar="N",
                    help="save the fine-tune of --init at N evenly spread epochs as local-dir folders under "
                         "OUT/checkpoints: a self-ensemble, passed to protect as more --surrogate local-dir:...")
    ev.add_argument("--epochs", type=int, default=None, help="default: 30 from scratch, 10 fine-tuning")
    ev.add_argument("--lr", type=float, default=None, help="default: 1e-3 from scratch, 1e-5 fine-tuning")
    ev.add_argument("--batch-size", type=int, default=None, help="default: 128")
    ev.add_argument("--seeds", type=int, default=1, help="victims with seeds SEED, SEED+1, ...: mean and sd")
    ev.add_argument("--defense", default="none", help="none | jpeg:Q | grayscale | strip:K | crop")
    ev.add_argument("--out", required=True)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default=None)
    ev.add_argument("--verbose", action="store_true", help="one line per epoch under the victim's progress bar")

    ing = sub.add_parser("ingest", help="Flickr8K/30K, MSCOCO or a CSV of images and captions into shards")
    ing.add_argument("src", help="the dataset folder (flickr8k, flickr30k, coco) or the CSV file (csv)")
    ing.add_argument("output", help="output prefix for the shards")
    ing.add_argument("--format", required=True, choices=("csv", "flickr8k", "flickr30k", "coco"))
    ing.add_argument("--captions", choices=("all", "first"), default="all",
                     help="all: one sample per caption row (as the authors train); first: one per image")
    ing.add_argument("--image-root", help="folder the image paths are relative to (default: the layout's own)")
    ing.add_argument("--annotations", help="coco: the captions JSON (default annotations/captions_train2017.json)")
    ing.add_argument("--image-column", help="csv: the image path column (default: images, image, filepath, ...)")
    ing.add_argument("--caption-column", help="csv: the caption column (default: caption, text, ...)")
    ing.add_argument("--split-file", help="keep only the images listed in this file (one name per line)")
    ing.add_argument("--test-images", type=int, default=0,
                     help="write OUT/train and OUT/test with this many whole images in test (seeded)")
    ing.add_argument("--seed", type=int, default=0)
    ing.add_argument("--max-size", type=int, default=512, help="longer image side after resizing (px)")
    ing.add_argument("--per-shard", type=int, default=1000)
    ing.add_argument("--storage-options")

    ins = sub.add_parser("inspect", help="imperceptibility and trigger summary of a protected output")
    ins.add_argument("output")
    ins.add_argument("--original", help="the input prefix, for SSIM/PSNR against the originals")
    ins.add_argument("--grid", help="write a PNG grid: original / protected / noise x10")
    ins.add_argument("--effect", metavar="COMPARE_JSON",
                     help="draw the gains of `mempipe eval --compare` (its compare.json) above the grid")
    ins.add_argument("--record", help="the private record (default: OUTPUT_mempipe_record when it exists)")
    ins.add_argument("--storage-options")
    return parser


def engine_config(args: argparse.Namespace):
    from .engine.surrogate import model_config_sizes

    named = surrogate_overrides(args.surrogates or [])
    if args.preset is None:   # the protective preset whenever the user gives a pretrained surrogate
        given = named.get("arch") or (args.arch or "")
        pretrained = bool(args.checkpoint) or ":" in given
        args.preset = "finetune-thief-trigger" if pretrained else "cpu-tiny"
    cfg = preset(args.preset)
    overrides: dict = {}
    if args.config:
        overrides = read_settings(args.config)   # the loader the presets are read with
    # one step, so that settings checked against each other (noise_size against the model's input)
    # meet the surrogate's own sizes, not the preset's
    overrides.update({name: getattr(args, name) for name, *_ in MEMConfig.field_specs()
                      if name not in CLI_ONLY_THROUGH_SURROGATE and getattr(args, name) is not None})
    overrides.update(named)
    config_file = overrides.get("model_config") or cfg.model_config
    if config_file and "image_size" not in named:
        overrides.update(model_config_sizes(config_file))
    cfg = cfg.with_overrides(**overrides)
    if args.preset in PRETRAINED_PRESETS and not cfg.pretrained_surrogate:
        raise ValueError(f"--preset {args.preset} continues a pretrained surrogate: give --checkpoint FILE "
                         "(and --model-config FILE for a model that is not an open_clip name)")
    return cfg


def surrogate_overrides(values: list[str]) -> dict:
    """``--surrogate`` values -> engine settings: the mode words, the first model name as the
    surrogate (its sizes read from its config), the others as the ensemble. Every name is checked
    here, before any shard is read: a tag that needs a download fails at once when offline."""
    from .engine import names

    modes = [v for v in values if v in ("shared", "per-unit")]
    models = [v for v in values if v not in ("shared", "per-unit")]
    out: dict = {"surrogate": modes[-1]} if modes else {}
    configs = {name: names.model_config(name) for name in models if names.is_named(name)}
    for name, config in configs.items():
        names.check_available(name, config)
    if models:
        first = models[0]
        out["arch"] = first
        if first in configs:
            out.update(names.sizes(first, configs[first]))
        out["ensemble"] = ",".join(models[1:])
    return out


def _protect(args: argparse.Namespace) -> int:
    from .io.shards import ReadLimits
    from .run.driver import RunRequest, new_version, run
    from .run.progress import RunProgress

    cfg = engine_config(args)
    options = parse_storage_options(args.storage_options)
    limits = ReadLimits.from_megabytes(args.max_member_mb, args.max_shard_mb, args.max_shard_megapixels)
    request = RunRequest(args.input, args.output, cfg, args.image_format, options, args.record, args.provenance,
                         limits, args.partition, args.window, args.break_lock)   # every check, before any work
    if args.new_run:
        output, record = new_version(request.output_url, args.record, options)
        request = dataclasses.replace(request, output_url=output, record_url=record)
        print(f"mempipe: new run: protecting into {output} (record {record})", file=sys.stderr)
    if not args.no_ray and small_run(args, options):
        args.no_ray = True
        if not args.quiet:
            print(f"mempipe: a small input (at most {SMALL_RUN_SHARDS} shards): protecting in this process, without "
                  "starting Ray (--num-actors N to use Ray anyway)", file=sys.stderr)
    if args.no_ray:
        from .run.in_process import InProcess

        distributor = InProcess(args.device)
    else:
        from .run.ray_pool import RayActorPool

        distributor = RayActorPool(NUM_ACTORS if args.num_actors is None else args.num_actors,
                                   args.gpus_per_actor or 0.0, args.ray_address, args.verbose)
    record = run(request, distributor, RunProgress(0, enabled=not args.quiet)).to_dict()
    failed_shards = record.get("shards_failed") or []
    if record.get("nothing_to_do"):
        print(f"mempipe: {record['nothing_to_do']}; nothing to protect (the run records are left as they were)",
              file=sys.stderr)
        print(json.dumps({k: record[k] for k in ("output", "shards_written", "samples_protected", "samples_failed",
                                                 "seconds")}))
        return 0
    if not args.quiet:
        if record["shards_done_before"]:
            print(f"mempipe: {record['shards_done_before']} of {record['shards_total']} shards already done, skipped",
                  file=sys.stderr)
        print(f"protected {record['samples_protected']} samples, {record['samples_failed']} failed (reasons in the "
              f"parquet files), {record['shards_written']} shard(s) written in {record['seconds']} s -> {record['output']}\n"
              f"private record (triggers, clusters; do not publish): {record['record']}", file=sys.stderr)
    for failure in failed_shards:
        print(f"mempipe: shard {failure['shard']} failed ({failure['stage']}): {failure['reason']}", file=sys.stderr)
    if failed_shards:
        print(f"mempipe: {len(failed_shards)} shard(s) failed and have no stats file; run the same command again "
              "to retry them", file=sys.stderr)
    print(json.dumps({**{k: record[k] for k in ("output", "shards_written", "samples_protected", "samples_failed",
                                                 "seconds")}, "shards_failed": len(failed_shards)}))
    return EXIT_SHARDS_FAILED if failed_shards else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo-data":
            from .data.demo_data import DEFAULT_DIFFICULTY, Style, write_demo_data

            if args.difficulty is not None and args.style != "photo":
                raise ValueError("--difficulty applies to --style photo only")
            difficulty = DEFAULT_DIFFICULTY if args.difficulty is None else args.difficulty
            print(json.dumps(write_demo_data(args.out, args.train, args.test, args.size, args.seed,
                                             parse_storage_options(args.storage_options),
                                             Style(args.style, difficulty, args.captions_per_image))))
            return 0
        if args.command == "protect":
            return _protect(args)
        if args.command == "ingest":
            from .data.ingest import Source, ingest

            source = Source(args.src, args.format, args.image_root, args.annotations, args.image_column,
                            args.caption_column, parse_storage_options(args.storage_options))
            print(json.dumps(ingest(source, args.output, args.captions, args.split_file, args.test_images, args.seed,
                                    args.max_size, args.per_shard)))
            return 0
        if args.command == "demo-model":
            from .evaluation.public_models import demo_model

            print(demo_model(args.out))
            return 0
        if args.command == "eval":
            from .evaluation.evaluate import main_eval

            return main_eval(args)
        if args.command == "inspect":
            from .evaluation.inspect_output import main_inspect

            return main_inspect(args)
    except StorageError as exc:   # storage that failed after every retry (the fit's record, a lock, a listing)
        print(f"mempipe: storage failure: {exc}; nothing finished was lost: run the same command again "
              "(a fit that could not be uploaded is kept locally and uploaded then)", file=sys.stderr)
        return EXIT_SHARDS_FAILED
    except (ValueError, FileNotFoundError) as exc:
        print(f"mempipe: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
