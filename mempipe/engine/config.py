"""Engine configuration and the presets (``paper`` = the authors' reference values)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, get_args, get_type_hints

METHODS = ("mem", "em", "random", "uc", "conv", "pattern")
SCOPES = ("sample", "cluster", "global")
NOISE_SCOPES = ("sample", "cluster", "cluster+sample")
PLACEMENTS = ("front", "random")
VOCABULARIES = ("any", "common", "captions")
OBJECTIVES = ("trigger", "joint")
SURROGATES = ("per-unit", "shared")
TRANSFORMS = ("resize", "crop")
REDUCTIONS = ("mean", "max")


@dataclass(frozen=True)
class MEMConfig:
    method: str = "mem"
    arch: str = "tiny-vit"          # open_clip model name or a tiny config of surrogate.py
    checkpoint: str | None = None   # local open_clip checkpoint file for the surrogate
    model_config: str | None = None  # open_clip model-config JSON (arch, image size, context length from it)
    image_size: int = 64
    context_length: int = 32
    epsilon: int = 8                # L-inf bound in pixel levels out of 255
    alpha: int = 1                  # PGD step in pixel levels
    pgd_steps: int = 5
    outer_iters: int = 6
    train_steps: int = 30
    hotflip_iters: int = 2
    candidates: int = 8
    trigger_len: int = 3
    trigger_scope: str = "sample"
    noise_scope: str = "sample"
    clusters: int = 20              # k-means clusters inside a unit (cluster scopes, uc)
    cluster_features: str = "both"  # text | image | both: what the k-means runs on
    cluster_share: float = 0.5      # cluster+sample noise: the cluster pattern's part of epsilon
    trigger_placement: str = "front"   # front (the paper) | random: at a random word boundary
    trigger_vocab: str = "any"      # any | common | captions: which words a trigger may use
    pgd_objective: str = "trigger"  # trigger | joint: also minimise the loss with the trigger removed
    conv_kernel: int = 3            # conv (CUDA-style): filter size
    conv_blur: float = 0.3          # conv: off-centre taps uniform in [0, conv_blur] before normalising
    pattern_grid: int = 4           # pattern: blocks per side of each group's +-eps pattern
    pattern_seed: int = 0           # pattern: a cluster's pattern is drawn from this and its id (one across units)
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    unit_size: int = 2048
    candidate_chunk: int = 4        # candidate trigger sets encoded per text forward
    pgd_batch_size: int = 0         # PGD batch (more in-batch negatives, fuller GPU); 0 = batch_size as the paper
    precision: str = "fp32"         # fp32 | bf16 (autocast, fp32 master weights; for GPUs)
    compile: bool = False           # torch.compile the image and text towers
    # shared (default): one surrogate per run, 2.75x faster on CPU and at parity in the victim rows
    # (bench/results/shared_surrogate.json, effectiveness.json); per-unit: each unit trains its own
    surrogate: str = "shared"
    unit_train_steps: int = 0       # shared: surrogate steps per round inside a unit (a fine-tune; 0 = frozen)
    # the thief's transform in the loop: the noise lives at noise_size (the stored images' size) and
    # every model sees it through a view; PGD draws a random training view per image and step
    noise_size: int = 0             # pixels of the images and noise (0: image_size, the model's input)
    transform: str = "resize"       # resize: the evaluation view only | crop: random resized crop + flip in PGD
    crop_scale: float = 0.5         # crop: smallest share of the image a crop keeps
    transform_jpeg: float = 0.0     # crop: probability of a differentiable JPEG (quality 50-90) per view
    transform_gray: float = 0.0     # crop: probability of grayscale per view
    ensemble: str = ""              # more surrogates, comma-separated open_clip names (ARCH:TAG, local-dir:, hf-hub:), frozen
    ensemble_reduce: str = "mean"   # several surrogates: PGD minimises their mean loss, or the worst one
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        if self.trigger_scope not in SCOPES:
            raise ValueError(f"unknown trigger scope {self.trigger_scope!r}; choose from {SCOPES}")
        if self.noise_scope not in NOISE_SCOPES:
            raise ValueError(f"unknown noise scope {self.noise_scope!r}; choose from {NOISE_SCOPES}")
        if self.cluster_features not in ("text", "image", "both"):
            raise ValueError(f"cluster features must be text, image or both, got {self.cluster_features!r}")
        for name, value, allowed in (("trigger placement", self.trigger_placement, PLACEMENTS),
                                     ("trigger vocabulary", self.trigger_vocab, VOCABULARIES),
                                     ("PGD objective", self.pgd_objective, OBJECTIVES),
                                     ("transform", self.transform, TRANSFORMS),
                                     ("ensemble reduction", self.ensemble_reduce, REDUCTIONS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose from {allowed}")
        if self.pgd_objective == "joint" and not self.uses_trigger:
            raise ValueError("the joint objective needs a trigger: method mem with trigger_len > 0")
        if self.noise_scope == "cluster+sample" and self.epsilon < 2:
            raise ValueError("cluster+sample noise splits epsilon in two: it needs epsilon >= 2")
        if not 0.0 < self.cluster_share < 1.0:
            raise ValueError(f"cluster_share must be strictly between 0 and 1, got {self.cluster_share}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate mode {self.surrogate!r}; choose from {SURROGATES}")
        if self.unit_train_steps < 0:
            raise ValueError("unit_train_steps must be >= 0")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        # conv is not eps-bounded (its cost is reported as PSNR/SSIM); epsilon only clamps it to int8 noise
        max_epsilon = 127 if self.method == "conv" else 32
        if not 1 <= self.epsilon <= max_epsilon:
            raise ValueError(f"epsilon must be in 1..{max_epsilon} pixel levels for {self.method}, got {self.epsilon}")
        if self.method == "conv" and (self.noise_scope == "cluster+sample" or self.conv_kernel % 2 == 0
                                      or self.conv_kernel < 1 or self.conv_blur < 0):
            raise ValueError("conv needs noise scope sample or cluster, an odd kernel and conv_blur >= 0")
        if self.method == "pattern" and (self.noise_scope == "cluster+sample" or self.pattern_grid < 1):
            raise ValueError("pattern needs noise scope sample or cluster and pattern_grid >= 1")
        if not 1 <= self.alpha <= self.epsilon:
            raise ValueError(f"alpha must be in 1..epsilon levels, got {self.alpha}")
        if self.noise_size and self.noise_size < self.image_size:
            raise ValueError(f"noise_size {self.noise_size} is below the model's input {self.image_size}: "
                             "store images at least as large as the model sees them")
        if not 0.05 <= self.crop_scale <= 1.0 or not 0 <= self.transform_jpeg <= 1 or not 0 <= self.transform_gray <= 1:
            raise ValueError("crop_scale must be in [0.05, 1]; transform_jpeg and transform_gray are probabilities")
        if self.pgd_batch_size < 0 or self.batch_size < 1 or self.candidate_chunk < 1:
            raise ValueError("batch sizes and candidate_chunk must be positive (pgd_batch_size 0 = batch_size)")
        if self.trigger_len < 0 or self.trigger_len > self.context_length - 4:
            raise ValueError(f"trigger length {self.trigger_len} does not fit the context length {self.context_length}")

    @property
    def uses_trigger(self) -> bool:
        return self.method == "mem" and self.trigger_len > 0

    @property
    def effective_noise_scope(self) -> str:
        return "cluster" if self.method == "uc" else self.noise_scope

    @property
    def pretrained_surrogate(self) -> bool:
        """The surrogate starts from released weights: a checkpoint file, or a name with a tag or a schema."""
        return bool(self.checkpoint) or self.arch.startswith(("local-dir:", "hf-hub:")) or ":" in self.arch

    @property
    def stored_size(self) -> int:
        """The resolution of the images and the noise the engine works on: ``noise_size``, or the
        model's input (twice it with the crop transform, so that crops resample the noise)."""
        return self.noise_size or (2 * self.image_size if self.transform == "crop" else self.image_size)

    @property
    def pgd_batch(self) -> int:
        return self.pgd_batch_size or self.batch_size

    def noise_bounds(self) -> dict[str, int]:
        """Epsilon of each noise part (levels); the parts together stay within epsilon."""
        scope = self.effective_noise_scope
        if scope != "cluster+sample":
            return {scope: self.epsilon}
        shared = min(self.epsilon - 1, max(1, round(self.epsilon * self.cluster_share)))
        return {"cluster": shared, "sample": self.epsilon - shared}

    def needs_clusters(self) -> bool:
        return "cluster" in self.effective_noise_scope or (self.uses_trigger and self.trigger_scope == "cluster")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_specs(cls) -> list[tuple[str, type, tuple | None, str]]:
        """(name, type, choices, help) for every setting: the one source the command line, the
        config file and the README's option list are made from."""
        hints = get_type_hints(cls)

        def kind(hint) -> type:   # ``int | None`` -> int: None is the "not given" of every option
            given = [a for a in get_args(hint) if a is not type(None)]
            return given[0] if given else hint

        return [(f.name, kind(hints[f.name]), CHOICES.get(f.name), HELP[f.name]) for f in fields(cls)]

    def with_overrides(self, **overrides: Any) -> "MEMConfig":
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


CHOICES: dict[str, tuple] = {
    "method": METHODS, "trigger_scope": SCOPES, "noise_scope": NOISE_SCOPES, "trigger_placement": PLACEMENTS,
    "trigger_vocab": VOCABULARIES, "pgd_objective": OBJECTIVES, "surrogate": SURROGATES,
    "cluster_features": ("text", "image", "both"), "precision": ("fp32", "bf16"),
    "transform": TRANSFORMS, "ensemble_reduce": REDUCTIONS,
}
HELP: dict[str, str] = {
    "method": "mem (the paper), em (image-only error minimisation), random (uniform noise), uc (one noise per "
              "cluster), conv (a random blur per cluster; not eps-bounded), pattern (a coarse +-eps block "
              "pattern per cluster; model-free)",
    "arch": "surrogate architecture: an open_clip model name (RN50, ViT-B-32, ...) or tiny-vit / tiny-resnet",
    "checkpoint": "a local open_clip checkpoint for the surrogate (and the feature model)",
    "model_config": "an open_clip model-config JSON for the surrogate (embed_dim, vision_cfg, text_cfg); its "
                    "file name is the architecture, and the image size and context length are read from it",
    "image_size": "surrogate input resolution in pixels",
    "context_length": "surrogate text context length in tokens",
    "epsilon": "L-inf bound in pixel levels out of 255 (1..32; up to 127 for conv)",
    "alpha": "PGD step in pixel levels (1..epsilon)",
    "pgd_steps": "PGD steps per round",
    "outer_iters": "min-min rounds",
    "train_steps": "surrogate steps per round (min-min on the fit sample, or per unit with --surrogate per-unit)",
    "hotflip_iters": "rounds in which HotFlip searches the trigger",
    "candidates": "HotFlip candidate tokens per trigger position",
    "trigger_len": "trigger words written in front of each caption (0: no trigger)",
    "trigger_scope": "one trigger per sample, per cluster, or one for the whole dataset",
    "noise_scope": "noise per sample, per cluster, or the sum of both",
    "clusters": "k-means clusters (of the fit sample with --partition cluster; inside a unit otherwise)",
    "cluster_features": "what the k-means runs on: caption features, image features or both",
    "cluster_share": "cluster+sample noise: the cluster pattern's share of epsilon (strictly between 0 and 1)",
    "trigger_placement": "front (the paper) or a random word boundary",
    "trigger_vocab": "which words a trigger may use",
    "pgd_objective": "trigger, or joint: the noise also minimises the loss with the trigger removed",
    "conv_kernel": "conv: filter size (odd)",
    "conv_blur": "conv: off-centre taps uniform in [0, conv_blur] before normalising",
    "pattern_grid": "pattern: blocks per side of each group's +-eps pattern",
    "pattern_seed": "pattern: a cluster's pattern comes from this seed and the cluster's id, the same in every unit",
    "batch_size": "surrogate batch",
    "lr": "surrogate AdamW learning rate",
    "weight_decay": "surrogate AdamW weight decay",
    "unit_size": "largest work unit in samples (memory follows it, not the dataset)",
    "candidate_chunk": "candidate trigger sets encoded per text forward (speed only)",
    "pgd_batch_size": "PGD batch (0: the surrogate batch, as the paper)",
    "precision": "fp32, or bf16 autocast with fp32 master weights (speed on a GPU only)",
    "compile": "torch.compile the surrogate's towers (speed only)",
    "surrogate": "shared: one surrogate fitted per run and reused by later runs; per-unit: each unit trains its own",
    "unit_train_steps": "shared surrogate: fine-tune steps per round inside a unit (0: frozen)",
    "noise_size": "resolution the noise is optimised at, on the centre square of each image (0: the surrogate's "
                  "input size, twice it with --transform crop); each surrogate sees the image resized to its input",
    "transform": "resize: PGD sees the evaluation view; crop: a random resized crop and flip per image and step "
                 "(the thief's training transform in the loop)",
    "crop_scale": "crop: smallest share of the image area a crop keeps (torchvision's scale range [x, 1])",
    "transform_jpeg": "crop: probability of a differentiable JPEG (quality 50-90) in a view",
    "transform_gray": "crop: probability of grayscale in a view",
    "ensemble": "more surrogates for the noise, frozen: open_clip names (ARCH:TAG, local-dir:DIR, hf-hub:ORG/REPO), "
                "comma-separated; on the command line, repeat --surrogate",
    "ensemble_reduce": "several surrogates: minimise their mean loss, or the largest one",
    "seed": "seed of every random choice (sample, clusters, triggers, noise)",
}

def read_settings(path: "str | Path") -> dict[str, Any]:
    """Engine settings from a YAML mapping: a ``--config`` file, or a preset of the package."""
    import yaml

    with open(path) as f:
        settings = yaml.safe_load(f) or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must hold a mapping of engine settings")
    return settings


# the presets are data: mempipe/presets/NAME.yaml, read like a --config file, over the defaults
PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
PRESETS: dict[str, MEMConfig] = {path.stem: MEMConfig().with_overrides(**read_settings(path))
                                 for path in sorted(PRESETS_DIR.glob("*.yaml"))}
PRETRAINED_PRESETS = ("finetune", "finetune-thief", "finetune-thief-trigger")
# what each preset protects against, for --help (measured in docs/effectiveness.md)
PRESET_THREATS = {
    "finetune-thief-trigger": "a thief fine-tuning a pretrained CLIP with open_clip_train on the captions as "
                              "published: MEM (joint objective, crop in the loop); keeps 0.02-0.04 of clean's gain "
                              "on a held-out family, nothing once the trigger words are stripped; the default with "
                              "a pretrained --surrogate",
    "finetune-thief": "image noise only (EM): against a thief who cleans captions; keeps about 0.4 of clean's "
                      "gain on the surrogate's own model, nothing measured on another family",
    "finetune": "the authors' MEM fine-tune recipe (needs a pretrained surrogate); measured: white-box only",
    "cpu-tiny": "quick trials on a CPU; MEM against a tiny model trained from scratch: protects nothing measured",
    "paper": "the paper's from-scratch MEM at 224 px with RN50 (a GPU run)",
}   # presets that continue a pretrained surrogate: a checkpoint is required


def preset(name: str) -> MEMConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
