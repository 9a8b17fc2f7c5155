"""The MEM engine: pure PyTorch (plus faiss for k-means), no file system, no Ray.

Inputs are tensors (uint8 images at the surrogate's resolution, caption token ids,
cluster ids); outputs are tensors (int8 noise levels, trigger token ids) and a loss log.
"""
from .config import MEMConfig, PRESETS, preset
from .mem import Given, UnitResult, protect_unit

__all__ = ["Given", "MEMConfig", "PRESETS", "preset", "UnitResult", "protect_unit"]
