"""CPU throughput of the MEM loop and its overhead over the bare model work.

Runs protect_unit with cpu-tiny on demo data while recording every surrogate call (image or
text encoder, input shape, whether gradients were on, optimizer steps). Then replays exactly
those calls on the same model in a tight loop (forward, and backward where MEM took
gradients) and reports overhead_ratio = MEM wall time / replay wall time, both measured in
this run. Each is run twice, alternating, and the faster of each pair counts: the machine is
shared, and the first MEM run also builds per-process caches (the trigger vocabulary). Also
times the engine's two exact shortcuts against their direct forms ("components").
Writes bench/results/throughput.json.

    python bench/throughput.py [--quick] [--samples 2000]
    python bench/throughput.py --methods 500      # the default against cpu-tiny and random noise
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

from mempipe.data.demo_data import make_sample  # noqa: E402
from mempipe.engine import preset, protect_unit  # noqa: E402
from mempipe.engine.losses import group_swap_losses  # noqa: E402
from mempipe.engine.surrogate import ClipModel, trim_padding, build_model  # noqa: E402
from mempipe.engine.text import compose, encode_captions  # noqa: E402
from mempipe_research.results import write_result  # noqa: E402


class Recorder:
    """Wraps ClipModel's encoders and AdamW.step to log the work MEM asks of the model."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, bool]] = []
        self.steps = 0

    def __enter__(self):
        self._img, self._txt, self._step = ClipModel.encode_image, ClipModel.encode_text, torch.optim.AdamW.step
        rec = self

        def image(model, x):
            rec.calls.append(("image", tuple(x.shape), torch.is_grad_enabled()))
            return rec._img(model, x)

        def text(model, t):
            # the shape of the work done: the text tower runs on the used positions only
            rec.calls.append(("text", tuple(trim_padding(t, model.context_length).shape), torch.is_grad_enabled()))
            return rec._txt(model, t)

        def step(opt, *a, **k):
            rec.steps += 1
            return rec._step(opt, *a, **k)

        ClipModel.encode_image, ClipModel.encode_text, torch.optim.AdamW.step = image, text, step
        return self

    def __exit__(self, *exc):
        ClipModel.encode_image, ClipModel.encode_text, torch.optim.AdamW.step = self._img, self._txt, self._step


def replay(calls, steps, cfg) -> float:
    """The same encoder calls in a tight loop; backward where MEM had gradients on."""
    model = build_model(cfg.arch, cfg.image_size, cfg.context_length, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    tokens = torch.randint(1, 49000, (cfg.batch_size * 8, cfg.context_length))
    start = time.perf_counter()
    for kind, shape, grad in calls:
        with torch.set_grad_enabled(grad):
            if kind == "image":
                x = torch.rand(shape, requires_grad=grad)
                out = model.encode_image(x)
            else:
                batch = tokens[: shape[0]].clone()
                batch[:, shape[1] - 1] = 49407  # end token where MEM's batch had its last one
                out = model.encode_text(batch)
            if grad:
                out.sum().backward()
    for _ in range(steps):
        opt.step()
    return time.perf_counter() - start


def _seconds(fn, repeat: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def dense_group_swap_losses(image_features, current_text, candidate_text, groups, n_groups, scale):
    """The direct form: one N x N logit matrix per group (what the engine did before)."""
    n = len(image_features)
    member = groups[None, :] == torch.arange(n_groups)[:, None]
    texts = torch.where(member[..., None], candidate_text[None], current_text[None])
    logits = scale * torch.einsum("nd,gmd->gnm", image_features, texts)
    diag = torch.arange(n)
    return (-(logits.log_softmax(dim=2)[:, diag, diag]).mean(1) - (logits.log_softmax(dim=1)[:, diag, diag]).mean(1)) / 2


@torch.no_grad()
def components(captions: list[str]) -> dict:
    """The two exact shortcuts, each against the direct form, timed here in this run."""
    out = {}
    for arch, size, ctx, batch in (("tiny-vit", 64, 32, 128), ("RN50", 224, 77, 32)):
        model = build_model(arch, size, ctx, seed=0).eval()
        body, lengths = encode_captions(captions[:batch], ctx - 2)
        tokens = compose(torch.randint(1000, 2000, (batch, 3)), body, lengths, ctx)
        full = _seconds(lambda: model.clip.encode_text(tokens), 3)
        used = _seconds(lambda: model.encode_text(tokens), 3)
        out[f"text_tower_{arch}"] = {"batch": batch, "context": ctx, "used_width": trim_padding(tokens, ctx).shape[1],
                                     "full_context_s": round(full, 4), "used_positions_s": round(used, 4),
                                     "speedup": round(full / used, 2)}
    n, d = 128, 1024  # a paper batch with per-sample triggers, RN50's feature width
    feats = [torch.nn.functional.normalize(torch.randn(n, d), dim=1) for _ in range(3)]
    groups = torch.arange(n)
    dense = _seconds(lambda: dense_group_swap_losses(*feats, groups, n, 100.0), 3)
    fast = _seconds(lambda: group_swap_losses(*feats, groups, n, 100.0), 3)
    out["group_swap_losses"] = {"batch": n, "dim": d, "groups": n, "dense_s": round(dense, 4),
                                "engine_s": round(fast, 5), "speedup": round(dense / fast, 1)}
    return out


def methods(samples: int, repeats: int) -> dict:
    """The protective path against MEM and the floor, as a user runs them (``mempipe protect --no-ray``,
    fit included) on the same shards, in one run, alternating, fastest of ``repeats`` each:

    - ``default``: what ``protect`` runs given a pretrained surrogate (``finetune-thief``: EM against
      the frozen surrogate), the surrogate being cpu-tiny's own network (tiny-vit, 64 px) saved as a
      checkpoint, so that the two differ by method only;
    - ``cpu-tiny``: MEM's min-min with a surrogate trained on the data;
    - ``random``: uniform noise: reading, decoding, encoding and writing, no model (the floor)."""
    import contextlib
    import io
    import tempfile

    from mempipe.cli import main as mempipe
    from mempipe.data.demo_data import write_split
    from mempipe.engine.surrogate import save_checkpoint

    tiny = preset("cpu-tiny")
    work = Path(tempfile.mkdtemp(prefix="mempipe-methods-"))
    write_split(str(work / "in"), samples, tiny.image_size, seed=0, first_index=0, per_shard=500)
    save_checkpoint(build_model(tiny.arch, tiny.image_size, tiny.context_length, seed=0), str(work / "tiny-vit.pt"))
    argv = {"default": ["--preset", "finetune-thief", "--arch", tiny.arch, "--image-size", str(tiny.image_size),
                        "--context-length", str(tiny.context_length), "--checkpoint", str(work / "tiny-vit.pt")],
            "cpu-tiny": ["--preset", "cpu-tiny"],
            "random": ["--method", "random"]}
    times: dict[str, list[float]] = {name: [] for name in argv}
    for repeat in range(repeats):
        for name, extra in argv.items():
            out = work / f"out-{name}-{repeat}"
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                assert mempipe(["protect", str(work / "in"), str(out), *extra, "--no-ray", "--quiet"]) == 0
            times[name].append(time.perf_counter() - started)
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    rates = {name: samples / min(t) for name, t in times.items()}
    return {"samples": samples, "image_px": tiny.image_size, "surrogate": f"{tiny.arch} at {tiny.image_size} px",
            "threads": torch.get_num_threads(), "runs_s": {k: [round(x, 1) for x in v] for k, v in times.items()},
            "samples_per_s": {k: round(v, 2) for k, v in rates.items()},
            "default_over_cpu_tiny": round(rates["default"] / rates["cpu-tiny"], 2),
            "default_over_random": round(rates["default"] / rates["random"], 3)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", type=int, metavar="SAMPLES",
                        help="only time the default, cpu-tiny and random noise through `mempipe protect` on "
                             "SAMPLES demo pairs; merged into the output under 'methods'")
    parser.add_argument("--quick", action="store_true", help="256 samples, 2 rounds: under 2 minutes")
    parser.add_argument("--repeats", type=int, default=2, help="MEM and replay runs, alternating; the fastest counts")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "throughput.json"))
    args = parser.parse_args()
    if args.methods:
        body = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
        body["methods"] = {**methods(args.methods, args.repeats), "date": time.strftime("%Y-%m-%d %H:%M"),
                           "command": "python bench/throughput.py " + " ".join(sys.argv[1:])}
        write_result(Path(args.out), body)
        print(json.dumps(body["methods"], indent=1))
        return 0
    cfg = preset("cpu-tiny")
    n = args.samples
    if args.quick:
        n, cfg = 256, cfg.with_overrides(outer_iters=2, train_steps=10)
    samples = [make_sample(i, cfg.image_size, seed=0) for i in range(n)]
    images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).contiguous()
    captions = [s[1] for s in samples]
    mem_times, replay_times = [], []
    for _ in range(args.repeats):
        with Recorder() as rec:
            start = time.perf_counter()
            protect_unit(images, captions, cfg)
            mem_times.append(time.perf_counter() - start)
        replay_times.append(replay(rec.calls, rec.steps, cfg))
    mem_time, replay_time = min(mem_times), min(replay_times)
    result = {"host": platform.node(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "samples": n, "config": cfg.to_dict(), "mem_seconds": round(mem_time, 2),
              "replay_seconds": round(replay_time, 2), "mem_runs_s": [round(t, 2) for t in mem_times],
              "replay_runs_s": [round(t, 2) for t in replay_times], "overhead_ratio": round(mem_time / replay_time, 3),
              "mem_samples_per_s": round(n / mem_time, 2), "encoder_calls": len(rec.calls),
              "optimizer_steps": rec.steps, "quick": args.quick, "components": components(captions)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(Path(args.out), result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
