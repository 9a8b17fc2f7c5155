"""The benchmarks' public stand-ins as open_clip model configs: A (``public-vit``), B
(``public-resnet``), C (``public-efficientnet``, the held-out family) and ``public-vit-wide``.
Importing this module registers them with open_clip, beside the package's own."""
from __future__ import annotations

from pathlib import Path

import open_clip

CONFIGS = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(CONFIGS)
NAMES = tuple(sorted(p.stem for p in CONFIGS.glob("*.json")))
