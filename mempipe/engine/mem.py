"""Multi-step Error Minimization over one work unit, and the baselines in the same loop.

    min_theta  min_{delta, t}  L( f(x + delta), g(t + c) )

Each round: train the surrogate on the protected pairs (AdamW), search the trigger
with HotFlip (first ``hotflip_iters`` rounds), then run PGD *descent* on the noise with
the captions shuffled inside the batch while every image keeps its own trigger.
``em`` is the same loop with no trigger; ``uc`` is ``em`` with one noise pattern per
cluster; ``random`` is uniform noise in [-eps, eps]; ``conv`` blurs each cluster (or each
image) with its own random filter and ``pattern`` gives each a coarse +-eps block pattern, the
surrogate serving these two only to find the clusters.

Beyond the paper: the noise is a sum of parts (per sample, per cluster, or both, each with
its own share of eps); the ``joint`` objective adds the loss against the caption without
its trigger; the trigger may sit at a random word boundary instead of in front.

Noise lives as int8 pixel levels: with sign steps of ``alpha`` whole levels from zero it
is exactly integer, so nothing is lost and a unit's noise costs one byte per value.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .clusters import kmeans
from .config import MEMConfig
from .convolution import convolution_noise
from .patterns import pattern_noise
from .hotflip import Candidates, hotflip_batch
from .losses import clip_loss
from .surrogate import ClipModel, build_model
from .views import resize, thief_view
from .text import compose, encode_captions, random_trigger_ids, vocabulary_mask, word_boundaries


@dataclass
class UnitResult:
    noise: torch.Tensor                    # N x 3 x S x S int8 pixel levels, per sample
    trigger_ids: torch.Tensor              # N x k token ids, per sample (k may be 0)
    cluster_ids: torch.Tensor | None       # N, when the unit was clustered
    centroids: np.ndarray | None
    log: list[dict] = field(default_factory=list)
    trigger_word_index: torch.Tensor | None = None  # N: caption word the trigger goes before (random placement)
    model: ClipModel | None = None         # the surrogate at the end of the loop (keep_model=True)


@dataclass
class NoisePart:
    """Noise shared by the samples of a group (one per sample, or one per cluster), within ``bound``."""

    store: torch.Tensor                    # G x 3 x S x S int8
    group: torch.Tensor                    # N -> G
    bound: int


class UnitTensors:
    """The unit's tensors and lookup tables, resident on the device for the whole unit."""

    def __init__(self, images: torch.Tensor, captions: list[str], cfg: MEMConfig, device: torch.device,
                 generator: torch.Generator | None = None):
        self.cfg = cfg
        self.images = images.to(device)                                   # uint8
        # convolutional surrogates (open_clip's RN* and tiny-resnet) run channels_last on a GPU; feed them that layout
        convolutional = cfg.arch.startswith("RN") or "resnet" in cfg.arch
        self.memory_format = torch.channels_last if device.type == "cuda" and convolutional else torch.contiguous_format
        self.body, self.lengths = (t.to(device) for t in encode_captions(captions, cfg.context_length - 2))
        n = len(images)
        self.parts = [NoisePart(torch.zeros(n, *images.shape[1:], dtype=torch.int8, device=device),
                                torch.arange(n, device=device), cfg.epsilon)]
        self.trigger_group = torch.arange(n, device=device)
        self.trigger = torch.zeros(n, cfg.trigger_len if cfg.uses_trigger else 0, dtype=torch.long, device=device)
        self.insert_word = self.insert_at = None
        if cfg.uses_trigger and cfg.trigger_placement == "random":
            self.insert_word, insert_at = word_boundaries(captions, generator or torch.Generator().manual_seed(cfg.seed))
            self.insert_at = insert_at.to(device)
        self.allowed = vocabulary_mask(cfg.trigger_vocab, self.body).to(device) if cfg.uses_trigger else None

    def set_groups(self, clusters: torch.Tensor | None, generator: torch.Generator,
                   fixed_trigger: torch.Tensor | None = None) -> None:
        cfg, device, n = self.cfg, self.images.device, len(self.images)
        shape = self.images.shape[1:]
        self.parts = []
        for scope, bound in cfg.noise_bounds().items():
            group = clusters.to(device) if scope == "cluster" else torch.arange(n, device=device)
            self.parts.append(NoisePart(torch.zeros(int(group.max()) + 1, *shape, dtype=torch.int8, device=device),
                                        group, bound))
        if cfg.uses_trigger:
            if cfg.trigger_scope == "cluster":
                self.trigger_group = clusters.to(device)
            elif cfg.trigger_scope == "global":
                self.trigger_group = torch.zeros(n, dtype=torch.long, device=device)
            if fixed_trigger is not None and fixed_trigger.ndim == 2:  # one fitted trigger per cluster of the unit
                if clusters is None or int(clusters.max()) >= len(fixed_trigger):
                    raise ValueError("a per-cluster trigger table needs cluster ids 0..rows-1")
                self.trigger_group = clusters.to(device)
                self.trigger = fixed_trigger.to(device)
            elif fixed_trigger is not None:  # a trigger shared across units (the pipeline's global trigger)
                self.trigger_group = torch.zeros(n, dtype=torch.long, device=device)
                self.trigger = fixed_trigger.reshape(1, -1).to(device)
            else:
                n_groups = int(self.trigger_group.max()) + 1
                self.trigger = random_trigger_ids(n_groups, cfg.trigger_len, generator, self.allowed).to(device)

    def noise(self) -> torch.Tensor:
        """Every sample's total noise (int8; the parts' bounds sum to at most epsilon)."""
        return sum(p.store[p.group].short() for p in self.parts).to(torch.int8)

    def protected_images(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.images[idx].float() + sum(p.store[p.group[idx]].float() for p in self.parts)
        return self.to_model_input(x)

    def to_model_input(self, pixels: torch.Tensor, size: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixel levels (float, any range, at the stored size) -> clamped [0, 1] at the model's input
        ``size`` (default: the surrogate's), in its memory layout. With a ``generator`` and the crop
        transform: one random training view per image (PGD's expectation over transformations)."""
        cfg = self.cfg
        x = pixels.clamp(0, 255) / 255.0
        size = size or cfg.image_size
        if generator is not None and cfg.transform == "crop":
            x = thief_view(x, size, generator, cfg.crop_scale, cfg.transform_jpeg, cfg.transform_gray)
        else:
            x = resize(x, size)
        return x.contiguous(memory_format=self.memory_format)

    def tokens(self, idx: torch.Tensor, caption_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Trigger + caption tokens; ``caption_idx`` pairs each trigger with another sample's caption."""
        cap = idx if caption_idx is None else caption_idx
        at = None if self.insert_at is None else self.insert_at[cap]
        return compose(self.trigger[self.trigger_group[idx]], self.body[cap], self.lengths[cap],
                       self.cfg.context_length, at)

    def plain_tokens(self, idx: torch.Tensor) -> torch.Tensor:
        """The captions as they came in: what a victim trains on once the trigger is stripped."""
        empty = torch.zeros(len(idx), 0, dtype=torch.long, device=idx.device)
        return compose(empty, self.body[idx], self.lengths[idx], self.cfg.context_length)


def surrogate_for(cfg: MEMConfig, device: torch.device, unit: UnitTensors, start: ClipModel | None = None) -> ClipModel:
    """A surrogate on the device, in the unit's memory layout, compiled when asked: fresh (or the
    configured checkpoint), or a private copy of ``start`` (the run's shared surrogate)."""
    if start is not None:
        model = copy.deepcopy(start).to(device)
    else:
        model = build_model(cfg.arch, cfg.image_size, cfg.context_length, cfg.checkpoint, seed=cfg.seed,
                            model_config=cfg.model_config).to(device)
    model = model.to(memory_format=unit.memory_format)
    if cfg.compile:
        # the towers only: the token embedding stays eager, where HotFlip reads its gradient
        model.clip.visual.compile()
        model.clip.transformer.compile()
    return model


def surrogate_optimizer(model: ClipModel, cfg: MEMConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW for the surrogate; the fused kernel on a GPU (one launch per step, not one per tensor)."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")


def _batches(n: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).split(size))


def _autocast(cfg: MEMConfig, device: torch.device):
    """bf16 autocast on the unit's device (fp32 master weights); on a CPU it is slower, and only useful
    to check the bf16 path where no GPU is at hand."""
    if cfg.precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_surrogate(model: ClipModel, opt: torch.optim.Optimizer, unit: UnitTensors, cfg: MEMConfig,
                     generator: torch.Generator, device: torch.device) -> float:
    model.train()
    n, losses = len(unit.images), []   # kept on the device: reading each loss back would stall the GPU
    order: list[torch.Tensor] = []
    for step in range(cfg.train_steps):
        if not order:
            order = _batches(n, cfg.batch_size, generator)
        idx = order.pop().to(device)
        # joint objective: every other batch without the trigger, as a victim on stripped captions sees it
        tokens = unit.plain_tokens(idx) if cfg.pgd_objective == "joint" and step % 2 else unit.tokens(idx)
        with _autocast(cfg, device):
            loss = clip_loss(model.encode_image(unit.protected_images(idx)), model.encode_text(tokens),
                             model.logit_scale())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    model.eval()
    return float(torch.stack(losses).float().mean()) if losses else float("nan")


@torch.no_grad()
def unit_features(model: ClipModel, unit: UnitTensors, which: str, batch_size: int) -> torch.Tensor:
    """Clean image and/or caption features of every sample (for the class-agnostic clusters)."""
    feats = []
    for idx in torch.arange(len(unit.images), device=unit.images.device).split(batch_size):
        parts = []
        if which in ("image", "both"):
            parts.append(model.encode_image(unit.to_model_input(unit.images[idx].float())))
        if which in ("text", "both"):
            parts.append(model.encode_text(unit.plain_tokens(idx)))
        feats.append(torch.nn.functional.normalize(torch.cat(parts, dim=1).float(), dim=1))
    return torch.cat(feats)


def hotflip_round(model: ClipModel, unit: UnitTensors, cfg: MEMConfig, generator: torch.Generator) -> tuple[float, float]:
    before, after = [], []
    search = Candidates(unit.allowed, cfg.candidates, cfg.candidate_chunk)
    for idx in _batches(len(unit.images), cfg.batch_size, generator):
        idx = idx.to(unit.images.device)
        with torch.no_grad(), _autocast(cfg, idx.device):
            image_features = model.encode_image(unit.protected_images(idx)).float()
        local, groups = torch.unique(unit.trigger_group[idx], return_inverse=True)
        with _autocast(cfg, idx.device):
            new, b, a = hotflip_batch(model, image_features, unit.trigger[local], groups, unit.body[idx],
                                      unit.lengths[idx], search,
                                      None if unit.insert_at is None else unit.insert_at[idx])
        unit.trigger[local] = new
        before.append(b)
        after.append(a)
    return float(np.mean(before)), float(np.mean(after))


def _member_loss(model: ClipModel, unit: UnitTensors, cfg: MEMConfig, total: torch.Tensor, text: torch.Tensor,
                 plain: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """One surrogate's loss on the noisy images, seen through a (random, with the crop transform) view."""
    with _autocast(cfg, total.device):
        image = model.encode_image(unit.to_model_input(total, model.input_size, generator)).float()
    loss = clip_loss(image, text, model.logit_scale().detach())
    if plain is not None:  # also minimise the loss that a victim on stripped captions sees
        loss = loss + clip_loss(image, plain, model.logit_scale().detach())
    return loss


def pgd_round(models: list[ClipModel], unit: UnitTensors, cfg: MEMConfig,
               generator: torch.Generator) -> tuple[float, float]:
    """PGD descent on the noise against every surrogate of ``models`` (their mean loss, or the worst)."""
    shuffle = cfg.uses_trigger  # with a trigger, the noise must pair with the trigger, not the caption
    per_sample_only = len(unit.parts) == 1 and cfg.effective_noise_scope == "sample"
    first, last = [], []
    for idx in _batches(len(unit.images), cfg.pgd_batch, generator):
        idx = idx.to(unit.images.device)
        x = unit.images[idx].float()
        lookups = [torch.unique(p.group[idx], return_inverse=True) for p in unit.parts]
        deltas = [p.store[local].float() for p, (local, _) in zip(unit.parts, lookups)]
        plains: list = [None] * len(models)
        if cfg.pgd_objective == "joint":
            with torch.no_grad(), _autocast(cfg, idx.device):
                plains = [m.encode_text(unit.plain_tokens(idx)).float() for m in models]
        for step in range(cfg.pgd_steps):
            perm = torch.randperm(len(idx), generator=generator).to(idx.device) if shuffle else None
            tokens = unit.tokens(idx, idx[perm] if shuffle else None)
            with torch.no_grad(), _autocast(cfg, idx.device):
                texts = [m.encode_text(tokens).float() for m in models]
            for d in deltas:
                d.requires_grad_(True)
            total = x + sum(d[inverse] for d, (_, inverse) in zip(deltas, lookups))
            losses = torch.stack([_member_loss(m, unit, cfg, total, t, p, generator)
                                  for m, t, p in zip(models, texts, plains)])
            loss = losses.max() if cfg.ensemble_reduce == "max" else losses.mean()
            grads = torch.autograd.grad(loss, deltas)
            deltas = [(d.detach() - cfg.alpha * g.sign()).clamp(-p.bound, p.bound)
                      for d, g, p in zip(deltas, grads, unit.parts)]
            if per_sample_only:  # project onto the valid pixel range too
                deltas[0] = torch.maximum(torch.minimum(deltas[0], 255 - x), -x)
            if step == 0:
                first.append(loss.detach())
        last.append(loss.detach())
        for p, d, (local, _) in zip(unit.parts, deltas, lookups):
            p.store[local] = d.round().to(torch.int8)
    return float(torch.stack(first).mean()), float(torch.stack(last).mean())


@dataclass
class Given:
    """What a unit may be given besides its pairs (see :func:`protect_unit`)."""

    clusters: torch.Tensor | None = None
    fixed_trigger: torch.Tensor | None = None
    surrogate: ClipModel | None = None
    ensemble: list[ClipModel] | tuple = ()
    cluster_keys: torch.Tensor | None = None   # (N,) the run's ids of ``clusters`` (what units must agree on)


NOTHING_GIVEN = Given()


def protect_unit(images: torch.Tensor, captions: list[str], cfg: MEMConfig, device: str | torch.device = "cpu",
                 given: Given = NOTHING_GIVEN, progress: Callable[[dict], None] | None = None,
                 keep_model: bool = False) -> UnitResult:
    """Protect one unit. ``images``: N x 3 x S x S uint8 at ``cfg.stored_size`` (the surrogate's
    input size unless ``noise_size`` says otherwise). ``given``:

    ``clusters`` (N, in 0..G-1): the unit's groups, instead of k-means on the surrogate's features.
    ``fixed_trigger`` (k ids): use this trigger for every sample and skip the HotFlip search,
    so that units protected by different workers share one trigger; (G x k, with ``clusters`` in
    0..G-1): one given trigger per cluster, e.g. the run's fitted per-cluster triggers.
    ``surrogate``: start from (a copy of) this model instead of a fresh one; with the shared
    surrogate the caller passes ``train_steps = unit_train_steps`` (0: the surrogate stays as it
    came, and each round is HotFlip + PGD against it). ``keep_model``: return the trained surrogate.
    ``ensemble``: more surrogates (frozen, each at its own input size and normalisation) that the
    noise is optimised against beside the first; training and HotFlip use the first alone.
    ``cluster_keys`` (N): the run-wide ids of the unit's clusters; the pattern method keys each
    cluster's pattern by them, so that one cluster carries one pattern in every unit.
    """
    device = torch.device(device)
    clusters, fixed_trigger = given.clusters, given.fixed_trigger
    size = cfg.stored_size
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != size or images.shape[-2] != size:
        raise ValueError(f"images must be N x 3 x {size} x {size} uint8, got {tuple(images.shape)} {images.dtype}")
    if len(images) != len(captions):
        raise ValueError("one caption per image")
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    n = len(images)

    if cfg.method == "random":
        noise = torch.randint(-cfg.epsilon, cfg.epsilon + 1, images.shape, generator=generator, dtype=torch.int16)
        noise = (images.short() + noise).clamp(0, 255) - images.short()
        return UnitResult(noise.to(torch.int8), torch.zeros(n, 0, dtype=torch.long), None, None,
                          [{"round": 0, "method": "random"}])

    unit = UnitTensors(images, captions, cfg, device, generator)
    model = surrogate_for(cfg, device, unit, given.surrogate)
    opt = surrogate_optimizer(model, cfg, device)
    if cfg.method in MODEL_FREE:
        return _model_free_unit(model, opt, unit, cfg, given, generator, progress, keep_model)
    members = [model] + [m.to(device).eval() for m in given.ensemble]
    for member in members[1:]:
        member.requires_grad_(False)
    centroids = None
    log: list[dict] = []
    for round_ in range(cfg.outer_iters):
        entry: dict = {"round": round_, "surrogate_loss": train_surrogate(model, opt, unit, cfg, generator, device)}
        if round_ == 0:
            # groups are fixed once the surrogate has seen the clean data once
            clusters, centroids = _clusters(model, unit, cfg, clusters)
            unit.set_groups(clusters, generator, fixed_trigger)
        if cfg.uses_trigger and round_ < cfg.hotflip_iters and fixed_trigger is None:
            entry["hotflip_loss_before"], entry["hotflip_loss_after"] = hotflip_round(model, unit, cfg, generator)
        entry["pgd_loss_first"], entry["pgd_loss_last"] = pgd_round(members, unit, cfg, generator)
        log.append(entry)
        if progress:
            progress(entry)

    return UnitResult(unit.noise().cpu(), unit.trigger[unit.trigger_group].cpu(),
                      None if clusters is None else clusters.cpu(), centroids, log, unit.insert_word,
                      model if keep_model else None)


def _clusters(model: ClipModel, unit: UnitTensors, cfg: MEMConfig,
              given: torch.Tensor | None) -> tuple[torch.Tensor | None, np.ndarray | None]:
    """The unit's class-agnostic clusters when the config needs them: the caller's, or k-means on
    the surrogate's features of the clean pairs (ids and centroids)."""
    if not cfg.needs_clusters() or given is not None:
        return given, None
    return kmeans(unit_features(model, unit, cfg.cluster_features, cfg.batch_size), cfg.clusters, cfg.seed)


MODEL_FREE = ("conv", "pattern")   # noise from each group's id alone (the images only bound it)


def _model_free_unit(model: ClipModel, opt: torch.optim.Optimizer, unit: UnitTensors, cfg: MEMConfig,
                     given: Given, generator: torch.Generator,
                     progress: Callable[[dict], None] | None, keep_model: bool) -> UnitResult:
    """conv and pattern: as much surrogate training on the clean pairs as the optimised methods get,
    used only for the cluster features; nothing is optimised against a model."""
    log: list[dict] = []
    for round_ in range(cfg.outer_iters):
        log.append({"round": round_, "surrogate_loss": train_surrogate(model, opt, unit, cfg, generator,
                                                                       unit.images.device)})
        if progress:
            progress(log[-1])
    n, images = len(unit.images), unit.images.cpu()
    clusters, centroids = _clusters(model, unit, cfg, given.clusters)
    by_cluster = cfg.effective_noise_scope == "cluster"
    if cfg.method == "conv":
        groups = clusters.cpu() if by_cluster else torch.arange(n)
        noise = convolution_noise(images, groups, cfg.conv_kernel, cfg.conv_blur, cfg.epsilon, generator)
    else:
        # keyed by the run's cluster ids where the caller has them, so that a cluster's pattern is the same
        # in every unit; per sample, fresh keys from the unit's generator: no two images anywhere share one
        keys = given.cluster_keys if given.cluster_keys is not None else clusters
        keys = keys.cpu() if by_cluster else torch.randint(0, 2 ** 62, (n,), generator=generator)
        noise = pattern_noise(images, keys, cfg.pattern_grid, cfg.epsilon, cfg.pattern_seed)
    return UnitResult(noise, torch.zeros(n, 0, dtype=torch.long), None if clusters is None else clusters.cpu(),
                      centroids, log, model=model if keep_model else None)


def train_shared_surrogate(images: torch.Tensor, captions: list[str], cfg: MEMConfig,
                           device: str | torch.device = "cpu") -> ClipModel:
    """The run's surrogate: the full min-min loop (the configured rounds and steps, noise and
    triggers on this sample) on a sample of the data; every unit then starts from it. A pretrained
    surrogate (``checkpoint``) with no surrogate steps is that model as it is: nothing to learn."""
    if cfg.pretrained_surrogate and cfg.train_steps == 0:
        return build_model(cfg.arch, cfg.image_size, cfg.context_length, cfg.checkpoint,
                           model_config=cfg.model_config).eval()
    return protect_unit(images, captions, cfg.with_overrides(surrogate="per-unit", compile=False), device,
                        keep_model=True).model.eval()


def unit_config(cfg: MEMConfig) -> MEMConfig:
    """What a unit runs with: the shared surrogate fine-tunes ``unit_train_steps`` per round."""
    return cfg.with_overrides(train_steps=cfg.unit_train_steps) if cfg.surrogate == "shared" else cfg


def bootstrap_features(images: torch.Tensor, captions: list[str], cfg: MEMConfig, steps: int,
                       device: str | torch.device = "cpu") -> tuple[ClipModel, torch.Tensor]:
    """A feature model for clustering: a surrogate trained ``steps`` batches on clean pairs
    (or the pretrained surrogate as given), and the features of the sample."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    clean = cfg.with_overrides(method="em", train_steps=steps)
    unit = UnitTensors(images, captions, clean, device)
    model = surrogate_for(clean.with_overrides(compile=False), device, unit)   # a few steps: compiling would not pay
    if not cfg.pretrained_surrogate and steps > 0:
        opt = surrogate_optimizer(model, cfg, device)
        train_surrogate(model, opt, unit, clean, generator, device)
    model.eval()
    return model, unit_features(model, unit, cfg.cluster_features, cfg.batch_size)


def sample_features(model: ClipModel, images: torch.Tensor, captions: list[str], cfg: MEMConfig,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Features of new samples under a bootstrapped feature model (for cluster assignment)."""
    unit = UnitTensors(images, captions, cfg.with_overrides(method="em"), torch.device(device))
    return unit_features(model, unit, cfg.cluster_features, cfg.batch_size)
