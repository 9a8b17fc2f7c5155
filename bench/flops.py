"""FLOPs of the paper protocol per work unit and of the default protective path per sample, counted
on this CPU, and what they ask of a GPU.

FlopCounterMode counts the matmul and convolution FLOPs of each surrogate call the MEM loop
makes (RN50 at 224 px, the text tower at the widths the demo captions really use, and at the
full 77-token context as open_clip runs it), per sample; the loop counts of the paper preset
turn them into FLOPs per unit. With a GPU measurement on record (bench/results/gpu_check.json)
it also derives the FLOP rate that run achieved in each phase (its code also encoded each
HotFlip batch's current texts once more, about 2 % of HotFlip's FLOPs, not counted here).

    python bench/flops.py [--out bench/results/flops.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent

from mempipe.data.demo_data import make_sample  # noqa: E402
from mempipe.engine import preset  # noqa: E402
from mempipe.engine.hotflip import EmbeddingTap  # noqa: E402
from mempipe.engine.surrogate import trim_padding, build_model  # noqa: E402
from mempipe.engine.text import compose, encode_captions  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402

# NVIDIA's datasheet figure for H100 SXM dense BF16 tensor-core throughput (not measured here)
H100_BF16_DENSE_TFLOPS = 989.0


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def mean_width(body, lengths, k: int, ctx: int, batch: int, batches: int = 16) -> float:
    """The text width a batch really uses (its longest caption + trigger + start/end, to a multiple of 8)."""
    gen = torch.Generator().manual_seed(0)
    widths = []
    for _ in range(batches):
        idx = torch.randperm(len(body), generator=gen)[:batch]
        tokens = compose(torch.ones(batch, k, dtype=torch.long), body[idx], lengths[idx], ctx)
        widths.append(trim_padding(tokens, ctx).shape[1])
    return sum(widths) / len(widths)


def per_sample_costs(model, size: int, ctx: int, width: int) -> dict[str, float]:
    """FLOPs per sample of each kind of call, counted on a batch of 4."""
    b = 4
    x = torch.rand(b, 3, size, size)
    tokens = torch.randint(1, 40000, (b, width))
    tokens[:, -1] = 49407                                    # the end token closes the used width

    def image_train():
        model.encode_image(x).sum().backward()

    def image_input_grad():
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(model.encode_image(xi).sum(), xi)

    def text_train():
        model.encode_text(tokens).sum().backward()

    def text_embedding_grad():  # HotFlip: the gradient at the token embeddings only
        tap = EmbeddingTap(model.token_embedding)
        try:
            out = model.encode_text(tokens)
            torch.autograd.grad(out.sum(), tap.captured)
        finally:
            tap.close()

    with torch.no_grad():
        image_f = counted(lambda: model.encode_image(x))
        text_f = counted(lambda: model.encode_text(tokens))
    costs = {"image_forward": image_f, "image_train": counted(image_train), "image_input_grad": counted(image_input_grad),
             "text_forward": text_f, "text_train": counted(text_train), "text_embedding_grad": counted(text_embedding_grad)}
    model.zero_grad(set_to_none=True)
    return {k: v / b for k, v in costs.items()}


def unit_flops(cfg, n: int, image: dict, text: dict, plain_text: dict) -> dict[str, float]:
    """FLOPs per unit of n samples in each phase, from the per-sample costs and the loop counts."""
    rounds, hot = cfg.outer_iters, cfg.hotflip_iters
    k, c = cfg.trigger_len, cfg.candidates
    return {
        "surrogate": rounds * cfg.train_steps * cfg.batch_size * (image["image_train"] + text["text_train"]),
        "pgd": rounds * cfg.pgd_steps * n * (image["image_input_grad"] + text["text_forward"]),
        # per batch: image features once; per position: one gradient pass (which also gives the
        # current texts), c candidates, one proposal (a second one only when the proposal loses)
        "hotflip": hot * n * (image["image_forward"]
                              + k * (text["text_embedding_grad"] + (c + 1) * text["text_forward"])),
        "cluster_features": n * (image["image_forward"] + plain_text["text_forward"]),
    }


def default_path_flops(samples: int = 4) -> dict:
    """FLOPs per sample of the default protective path (``finetune-thief``: error-minimising noise
    against frozen pretrained surrogates, no surrogate training, no trigger), counted over the whole
    engine call (``protect_unit``) at ViT-B-32 / 224 px, alone and with RN50 as a second surrogate.
    The weights are random: FLOPs do not depend on them."""
    from mempipe.engine import protect_unit as protect

    cfg = preset("finetune-thief")
    images = torch.randint(0, 256, (samples, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    captions = [make_sample(i, 16, seed=0)[1] for i in range(samples)]
    vit = build_model("ViT-B-32", cfg.image_size, cfg.context_length, seed=0).eval()
    rn50 = build_model("RN50", cfg.image_size, cfg.context_length, seed=0).eval()
    out = {"preset": "finetune-thief", "pgd_steps_per_sample": cfg.outer_iters * cfg.pgd_steps, "samples_counted": samples}
    for label, ensemble in (("ViT-B-32", []), ("ViT-B-32 + RN50", [rn50])):
        flops = counted(lambda: protect(images, captions, cfg, surrogate=vit, ensemble=ensemble))
        out[label] = {"tflop_per_sample": round(flops / samples / 1e12, 4),
                      # what 300 samples/s per GPU asks: a sustained rate, and its share of the H100's datasheet peak
                      "tflops_needed_for_300_samples_per_s": round(300 * flops / samples / 1e12, 1),
                      "share_of_h100_peak_for_300": round(300 * flops / samples / 1e12 / H100_BF16_DENSE_TFLOPS, 3)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "flops.json"))
    parser.add_argument("--unit", type=int, default=2048)
    parser.add_argument("--target", type=float, default=50.0, help="samples/s to price")
    parser.add_argument("--dataset", type=int, default=1_000_000,
                        help="samples one shared surrogate serves (its training is spread over them)")
    args = parser.parse_args()
    cfg = preset("paper")
    ctx, n = cfg.context_length, args.unit
    captions = [make_sample(i, 16, seed=0)[1] for i in range(n)]   # the demo captions the GPU check uses
    body, lengths = encode_captions(captions, ctx - 2)
    used = mean_width(body, lengths, cfg.trigger_len, ctx, cfg.batch_size)
    used_plain = mean_width(body, lengths, 0, ctx, cfg.batch_size)

    model = build_model(cfg.arch, cfg.image_size, ctx, seed=0)
    result = {"preset": cfg.to_dict(), "unit": n, "text_width_used": used, "text_width_used_plain": used_plain,
              "per_sample_flops": {}, "unit_flops": {}}
    for label, width, plain_width in (("full_context", ctx, ctx), ("used_positions", round(used), round(used_plain))):
        costs = per_sample_costs(model, cfg.image_size, ctx, width)
        plain = costs if plain_width == width else per_sample_costs(model, cfg.image_size, ctx, plain_width)
        result["per_sample_flops"][label] = costs
        phases = unit_flops(cfg, n, costs, costs, plain)
        total = sum(phases.values())
        result["unit_flops"][label] = {**phases, "total": total, "per_sample": total / n,
                                       f"tflops_needed_for_{args.target:g}_samples_per_s": total / n * args.target / 1e12}
    fast = result["unit_flops"]["used_positions"]
    result["h100_bf16_dense_tflops_datasheet"] = H100_BF16_DENSE_TFLOPS
    result["share_of_h100_peak_needed"] = fast[f"tflops_needed_for_{args.target:g}_samples_per_s"] / H100_BF16_DENSE_TFLOPS
    # the surrogate's steps are fixed per round; PGD, HotFlip and the features grow with the unit
    result["by_unit_size"] = []
    for size in (n, 4 * n, 16 * n):
        grow = size / n
        total = fast["surrogate"] + grow * (fast["pgd"] + fast["hotflip"] + fast["cluster_features"])
        needed = total / size * args.target / 1e12
        result["by_unit_size"].append({"unit": size, "tflop_per_sample": round(total / size / 1e12, 2),
                                       f"tflops_needed_for_{args.target:g}_samples_per_s": round(needed, 1),
                                       "share_of_h100_peak": round(needed / H100_BF16_DENSE_TFLOPS, 3)})

    # --surrogate shared: one min-min run on a unit-sized sample per run (its whole protocol, once),
    # then per unit only PGD, HotFlip and features (unit_train_steps = 0, the default)
    run_level = sum(fast[k] for k in ("surrogate", "pgd", "hotflip", "cluster_features"))
    result["shared"] = {"dataset_samples": args.dataset, "run_level_tflop": round(run_level / 1e12, 1),
                        "by_unit_size": []}
    for size in (n, 4 * n):
        grow = size / n
        per_sample = grow * (fast["pgd"] + fast["hotflip"] + fast["cluster_features"]) / size + run_level / args.dataset
        needed = per_sample * args.target / 1e12
        result["shared"]["by_unit_size"].append({
            "unit": size, "tflop_per_sample": round(per_sample / 1e12, 2),
            f"tflops_needed_for_{args.target:g}_samples_per_s": round(needed, 1),
            "share_of_h100_peak": round(needed / H100_BF16_DENSE_TFLOPS, 3)})

    result["default_path"] = default_path_flops()
    gpu = ROOT / "bench" / "results" / "gpu_check.json"
    if gpu.exists():
        # what the recorded GPU run achieved: its code ran the text tower at the width it recorded
        g = json.loads(gpu.read_text())
        run = g.get("variants", {}).get("paper") or g["bf16"]   # older files kept the paper row as "bf16"
        width_run = g.get("text_width", "full_context")
        basis = result["unit_flops"][width_run]
        steps = g.get("train_steps_timed", 50)
        achieved = {
            "surrogate": basis["surrogate"] * steps / (cfg.train_steps * cfg.outer_iters) / run["train_s"],
            "pgd": basis["pgd"] / cfg.outer_iters / run["pgd_s"],
            "hotflip": basis["hotflip"] / cfg.hotflip_iters / run["hotflip_s"],
        }
        overall = basis["total"] / run["extrapolated_full_protocol_s"]
        result["recorded_gpu_run"] = {"gpu": g["gpu"], "text_width": width_run,
                                      "achieved_tflops": {k: round(v / 1e12, 1) for k, v in achieved.items()},
                                      "achieved_tflops_overall": round(overall / 1e12, 1)}
        # a projection, not a measurement: the current code's FLOPs at the rate that run sustained
        for row in result["by_unit_size"] + result["shared"]["by_unit_size"]:
            row["projected_samples_per_s_at_recorded_rate"] = round(overall / (row["tflop_per_sample"] * 1e12), 1)
        # the default path is PGD alone: priced at the rate the recorded run sustained in its PGD phase
        pgd_rate = achieved["pgd"]
        for label in ("ViT-B-32", "ViT-B-32 + RN50"):
            row = result["default_path"][label]
            row["projected_samples_per_s_at_recorded_pgd_rate"] = round(pgd_rate / (row["tflop_per_sample"] * 1e12), 1)
            row["laion400m_gpu_hours"] = round(400e6 / row["projected_samples_per_s_at_recorded_pgd_rate"] / 3600)
        paper = result["shared"]["by_unit_size"][0]["projected_samples_per_s_at_recorded_rate"]
        result["default_path"]["paper_protocol_laion400m_gpu_hours"] = round(400e6 / paper / 3600)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(Path(args.out), result)
    print(json.dumps({k: v for k, v in result.items() if k != "preset"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
