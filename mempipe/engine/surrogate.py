"""CLIP models for surrogates and victims, built with open_clip.

Any open_clip architecture by name (RN50, ViT-B-32, ..., and the project's own configs in
``mempipe/model_configs``: tiny models that train on a CPU, the public stand-ins) from scratch or
from a local checkpoint file, built by ``open_clip.create_model`` alone. ``ClipModel`` adds
CLIP's pixel normalisation so that callers work in [0, 1] pixel space, where the
L-inf budget lives.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

import open_clip

from . import names

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# Every architecture the project names (the tiny surrogates and victims, the public stand-ins) is an
# open_clip model-config JSON in the package, registered with open_clip and built by its factory
# like any open_clip model; image size and context length are set per use.
MODEL_CONFIGS_DIR = Path(__file__).resolve().parent.parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIGS_DIR)
PROJECT_MODELS = tuple(sorted(p.stem for p in MODEL_CONFIGS_DIR.glob("*.json")))


class ClipModel(nn.Module):
    """An open_clip CLIP that takes images in [0, 1] and returns normalised features."""

    def __init__(self, clip: nn.Module, context_length: int, mean=CLIP_MEAN, std=CLIP_STD) -> None:
        super().__init__()
        self.clip = clip
        self.context_length = context_length
        # each model's own normalisation (open_clip's preprocess config), so an ensemble can mix them
        self.register_buffer("mean", torch.tensor(tuple(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tuple(std)).view(1, 3, 1, 1), persistent=False)

    @property
    def input_size(self) -> int:
        """The square image size the vision tower was built for."""
        size = getattr(self.clip.visual, "image_size", None)
        if size is None:   # timm towers keep it in their patch embedding, or not at all
            size = getattr(getattr(getattr(self.clip.visual, "trunk", None), "default_cfg", {}), "get", lambda *_: None)("input_size")
            size = size[-1] if size else 224
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.clip.token_embedding

    def encode_image(self, images01: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image((images01 - self.mean) / self.std), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self._causal_text:
            return F.normalize(self.clip.encode_text(tokens), dim=-1)
        return F.normalize(self._encode_text_prefix(trim_padding(tokens, self.context_length)), dim=-1)

    @property
    def _causal_text(self) -> bool:
        clip = self.clip
        return (isinstance(clip, CLIP) and clip.text_pool_type == "argmax"
                and getattr(clip, "attn_mask", None) is not None)

    def _encode_text_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's text tower on the first ``tokens.shape[1]`` positions only.

        Exact: under the causal mask no position attends to a later one, and the feature is
        read at the end token, so the padding after the batch's last end token changes nothing.
        open_clip's own ``encode_text`` insists on the full context, where most of the work is
        padding (captions are short; the paper's context is 77).
        """
        clip, width = self.clip, tokens.shape[1]
        cast = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:width].to(cast)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:width, :width]))
        x = x[torch.arange(len(x), device=x.device), tokens.argmax(dim=-1)]   # the end token has the largest id
        projection = clip.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection

    def logit_scale(self) -> torch.Tensor:
        # CLIP clamps the learned temperature at 100
        return self.clip.logit_scale.exp().clamp(max=100.0)


def trim_padding(tokens: torch.Tensor, context_length: int, multiple: int = 8) -> torch.Tensor:
    """Cut the columns after the batch's last end token, rounded up to a multiple of 8 (tensor
    cores, and few distinct shapes for compiled kernels). Reads one number back from the device."""
    used = int(tokens.argmax(dim=1).max()) + 1
    return tokens[:, : min(context_length, tokens.shape[1], -(-used // multiple) * multiple)]


def read_model_config(path: str) -> dict:
    """An open_clip model-config JSON (``embed_dim``, ``vision_cfg``, ``text_cfg``), checked."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the model config {path}: {err}") from None
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        raise ValueError(f"{path} is not an open_clip model config: it has no {', '.join(missing)}")
    return config


def model_config_sizes(path: str) -> dict:
    """The name open_clip registers the file under (its stem), and the image size and context
    length the model was built for: what the rest of a run must use with it."""
    config = read_model_config(path)
    size = config["vision_cfg"].get("image_size", 224)
    return {"arch": Path(path).stem, "image_size": int(size if isinstance(size, int) else size[0]),
            "context_length": int(config["text_cfg"].get("context_length", 77))}


def with_model_config(cfg):
    """``cfg`` (a MEMConfig) with the architecture, image size and context length of its
    ``model_config`` file, when it names one."""
    return cfg.with_overrides(**model_config_sizes(cfg.model_config)) if cfg.model_config else cfg


_REGISTERED: set[str] = set()


def _register(path: str) -> str:
    """Make open_clip know the file's model (by its stem), once per process."""
    resolved = str(Path(path).resolve())
    if resolved not in _REGISTERED:
        read_model_config(path)
        open_clip.add_model_config(resolved)
        _REGISTERED.add(resolved)
    return Path(path).stem


def build_model(arch: str, image_size: int, context_length: int, checkpoint: str | None = None,
                seed: int | None = None, model_config: str | None = None) -> ClipModel:
    """A CLIP from scratch (seeded), or loaded from a local open_clip checkpoint file.

    ``model_config``: an open_clip model-config JSON; the model is built by open_clip from it (and
    ``checkpoint`` loaded by open_clip's own loader), at the sizes the file names.
    """
    if seed is not None:
        torch.manual_seed(seed)
    if names.is_named(arch):   # ARCH:TAG, hf-hub:..., local-dir:...: open_clip's factory builds it
        return build_named(arch, image_size, context_length)
    if model_config:
        sizes = model_config_sizes(model_config)
        if (sizes["image_size"], sizes["context_length"]) != (image_size, context_length):
            raise ValueError(f"{model_config} is built for {sizes['image_size']} px and {sizes['context_length']} "
                             f"tokens, not {image_size} px and {context_length} tokens")
        clip = open_clip.create_model(_register(model_config), pretrained=checkpoint)
        return ClipModel(clip, context_length)
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown architecture {arch!r}: an open_clip model name (the project's own: "
                         f"{', '.join(PROJECT_MODELS)}) or --model-config FILE")
    # a checkpoint must have been trained at these sizes (224 px / 77 tokens for released weights)
    clip = open_clip.create_model(arch, pretrained=checkpoint, force_image_size=image_size,
                                  force_context_length=context_length)
    return ClipModel(clip, context_length)


def build_named(name: str, image_size: int | None = None, context_length: int | None = None) -> ClipModel:
    """A surrogate named as open_clip names it (see ``names``), with its own normalisation."""
    config = names.model_config(name)   # read once: the sizes, the availability check and the normalisation use it
    built = names.sizes(name, config)
    if image_size is not None and (image_size, context_length) != (built["image_size"], built["context_length"]):
        raise ValueError(f"{name} is built for {built['image_size']} px and {built['context_length']} tokens, "
                         f"not {image_size} px and {context_length} tokens")
    names.check_available(name, config)
    parsed = names.parse(name)
    clip = open_clip.create_model(parsed.model, pretrained=parsed.pretrained)
    preprocess = config["preprocess_cfg"]
    return ClipModel(clip, built["context_length"], preprocess.get("mean", CLIP_MEAN), preprocess.get("std", CLIP_STD))


@functools.lru_cache(maxsize=2)
def ensemble_models(spec: str) -> tuple[ClipModel, ...]:
    """The frozen extra surrogates of a config's ``ensemble`` (built once per process)."""
    models = []
    for name in (n.strip() for n in spec.split(",") if n.strip()):
        if not names.is_named(name):
            raise ValueError(f"ensemble member {name!r} must be pretrained: ARCH:TAG, local-dir:DIR or hf-hub:ORG/REPO")
        models.append(build_named(name).eval().requires_grad_(False))
    return tuple(models)


def save_checkpoint(model: ClipModel, path: str) -> None:
    """Save in the open_clip checkpoint format (a ``state_dict`` entry)."""
    torch.save({"state_dict": model.clip.state_dict()}, path)
