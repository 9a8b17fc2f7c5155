"""CPU throughput of the MEM loop and its overhead over the bare model work.

Runs protect_unit with cpu-tiny on demo data while recording every surrogate call (image or
text encoder, input shape, whether gradients were on, optimizer steps). Then replays exactly
those calls on the same model in a tight loop (forward, and backward where MEM took
gradients) and reports overhead_ratio = MEM wall time / replay wall time, both measured in
this run. Writes bench/results/throughput.json.

    python bench/throughput.py [--quick] [--samples 2000]
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
sys.path.insert(0, str(ROOT))

from mempipe.demo_data import make_sample  # noqa: E402
from mempipe.engine import preset, protect_unit  # noqa: E402
from mempipe.engine.surrogate import ClipModel, build_model  # noqa: E402


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
            rec.calls.append(("text", tuple(t.shape), torch.is_grad_enabled()))
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
    tokens[:, -1] = 49407
    start = time.perf_counter()
    for kind, shape, grad in calls:
        with torch.set_grad_enabled(grad):
            if kind == "image":
                x = torch.rand(shape, requires_grad=grad)
                out = model.encode_image(x)
            else:
                out = model.encode_text(tokens[: shape[0]])
            if grad:
                out.sum().backward()
    for _ in range(steps):
        opt.step()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="512 samples, 2 rounds: under 2 minutes")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "throughput.json"))
    args = parser.parse_args()
    cfg = preset("cpu-tiny")
    n = args.samples
    if args.quick:
        n, cfg = 512, cfg.with_overrides(outer_iters=2, train_steps=10)
    samples = [make_sample(i, cfg.image_size, seed=0) for i in range(n)]
    images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).contiguous()
    captions = [s[1] for s in samples]
    with Recorder() as rec:
        start = time.perf_counter()
        protect_unit(images, captions, cfg)
        mem_time = time.perf_counter() - start
    replay_time = replay(rec.calls, rec.steps, cfg)
    result = {"host": platform.node(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "samples": n, "config": cfg.to_dict(), "mem_seconds": round(mem_time, 2),
              "replay_seconds": round(replay_time, 2), "overhead_ratio": round(mem_time / replay_time, 3),
              "mem_samples_per_s": round(n / mem_time, 2), "encoder_calls": len(rec.calls),
              "optimizer_steps": rec.steps, "quick": args.quick}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
