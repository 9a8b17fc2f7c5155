"""Surrogates named as open_clip names them.

``ARCH`` (an open_clip architecture, from scratch), ``ARCH:TAG`` (a released checkpoint, e.g.
``ViT-B-32:openai``; open_clip downloads and caches it), ``hf-hub:org/repo`` and
``local-dir:/path`` (a folder with ``open_clip_config.json`` and the weights, as open_clip
writes them). open_clip's own factory builds every one of them; this module only splits the
name, reads the sizes the model was built for, and says early and clearly when weights are
not on this machine and cannot be fetched.
"""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

SCHEMAS = ("local-dir:", "hf-hub:")
HUB_HOST = ("huggingface.co", 443)


@dataclass(frozen=True)
class ModelName:
    model: str              # what open_clip.create_model takes as its model name
    pretrained: str | None  # a tag (or None)


def is_named(name: str) -> bool:
    """A name this module resolves (a schema, or ARCH:TAG), as opposed to a bare architecture."""
    return name.startswith(SCHEMAS) or (":" in name and not name.startswith("/"))


def parse(name: str) -> ModelName:
    if name.startswith(SCHEMAS):
        return ModelName(name, None)
    arch, _, tag = name.partition(":")
    return ModelName(arch, tag or None)


def model_config(name: str) -> dict:
    """The model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) and its preprocess config."""
    import open_clip

    parsed = parse(name)
    if parsed.model.startswith("local-dir:"):
        folder = Path(parsed.model.removeprefix("local-dir:"))
        path = folder / "open_clip_config.json"
        if not path.is_file():
            raise ValueError(f"{name}: no open_clip_config.json in {folder} (a local-dir: folder holds the config "
                             "and the weights, as open_clip writes them)")
        body = json.loads(path.read_text())
        return {"model_cfg": body["model_cfg"], "preprocess_cfg": body.get("preprocess_cfg", {})}
    if parsed.model.startswith("hf-hub:"):
        check_reachable(name)
        from open_clip.factory import _get_hf_config

        body = _get_hf_config(parsed.model.removeprefix("hf-hub:"))
        return {"model_cfg": body["model_cfg"], "preprocess_cfg": body.get("preprocess_cfg", {})}
    config = open_clip.get_model_config(parsed.model)
    if config is None:
        raise ValueError(f"unknown open_clip architecture {parsed.model!r} in {name!r}")
    preprocess = open_clip.get_pretrained_cfg(parsed.model, parsed.pretrained) if parsed.pretrained else {}
    if parsed.pretrained and not preprocess and not Path(parsed.pretrained).is_file():
        tags = [t for a, t in open_clip.list_pretrained() if a == parsed.model]
        raise ValueError(f"{name}: open_clip has no pretrained tag {parsed.pretrained!r} for {parsed.model} "
                         f"(known: {', '.join(tags) or 'none'})")
    return {"model_cfg": config, "preprocess_cfg": {k: preprocess[k] for k in ("mean", "std") if k in preprocess}}


def sizes(name: str, config: dict | None = None) -> dict:
    """The image size and context length the named model was built for (``config``: its
    ``model_config``, when the caller has read it already)."""
    config = (config or model_config(name))["model_cfg"]
    size = config["vision_cfg"].get("image_size", 224)
    return {"image_size": int(size if isinstance(size, int) else size[0]),
            "context_length": int(config["text_cfg"].get("context_length", 77))}


def cached(name: str) -> bool:
    """Whether the weights a tag or hub name needs are already on this machine."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    parsed = parse(name)
    if parsed.model.startswith("local-dir:") or not (parsed.pretrained or parsed.model.startswith("hf-hub:")):
        return True
    if parsed.pretrained and Path(parsed.pretrained).is_file():
        return True
    if parsed.model.startswith("hf-hub:"):
        repo = parsed.model.removeprefix("hf-hub:")
        files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    else:
        hub = (open_clip.get_pretrained_cfg(parsed.model, parsed.pretrained).get("hf_hub") or "").rstrip("/")
        if not hub:   # a plain URL download: open_clip's own cache is not looked into here
            return False
        parts = hub.split("/")   # org/repo[/file]
        repo = "/".join(parts[:2])
        files = tuple(f for f in ("/".join(parts[2:]), "open_clip_model.safetensors", "open_clip_pytorch_model.bin") if f)
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def check_reachable(name: str, timeout: float = 3.0) -> None:
    """Fail at once, with what to do, when the weights must be downloaded and the hub cannot be
    reached (open_clip would retry for about a minute first)."""
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
    except OSError as err:
        raise ValueError(f"{name} needs a download from {HUB_HOST[0]}, which cannot be reached from here ({err}). "
                         "Offline, export the model once where it can be downloaded and pass it as "
                         "local-dir:/path (a folder with open_clip_config.json and the weights), or give "
                         "--model-config FILE.json --checkpoint WEIGHTS.pt") from None


def check_available(name: str, config: dict | None = None) -> None:
    """Everything a run needs to build the named model is here, or can be fetched: checked before any shard is read."""
    if config is None:
        model_config(name)
    if not cached(name):
        check_reachable(name)
