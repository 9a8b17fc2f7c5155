"""Image decoding, encoding and the native-resolution noise mapping (Pillow + NumPy).

Decoding is defensive: crawled shards hold anything. Every failure becomes an
``ImageError`` with a message that goes into the sample's failure record.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MIN_SIDE = 8  # smaller images cannot carry a meaningful pattern; recorded as failed
MAX_PIXELS = 89_478_485  # Pillow's own warning threshold, treated as a hard limit


class ImageError(ValueError):
    """An image that cannot be protected; the message is the failure record."""


def _high_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit (``I;16*``) and 32-bit integer (``I``) grayscale scaled to 0..255, not clipped:
    a plain ``convert`` clips every value above 255 to white."""
    values = np.asarray(image).astype(np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, str]:
    """Decode bytes to an RGB Pillow image as a viewer shows it; also return the source mode.

    EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and alpha images are converted
    (alpha is composited on white). Decompression bombs, truncated and tiny images fail.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"image too large: {width}x{height} exceeds {max_pixels} pixels (decompression bomb limit)")
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb: {exc}") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image too small: {width}x{height} (minimum side {MIN_SIDE} px)")
    mode = image.mode
    if mode.startswith("I"):
        image = _high_depth_to_8bit(image)
    elif mode == "F":
        raise ImageError("floating-point images are not supported")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB"), mode


def decode_rgb(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Decode bytes to an HxWx3 uint8 RGB array (see :func:`decode_image`); also the source mode."""
    image, mode = decode_image(data, max_pixels)
    return np.asarray(image, dtype=np.uint8).copy(), mode


def image_pixels(data: bytes) -> int:
    """Width x height from the header alone (no decoding); 0 when the header is unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size[0] * image.size[1]
    except Exception:
        return 0


@dataclass(frozen=True)
class ImageFormat:
    """Output encoding: ``keep`` (input's extension, lossless for png/webp), ``png``, ``webp`` (lossless), ``jpeg:Q``."""

    kind: str
    quality: int = 95

    @classmethod
    def parse(cls, text: str) -> "ImageFormat":
        text = text.strip().lower()
        if text in ("keep", "png", "webp"):
            return cls(text)
        if text.startswith(("jpeg", "jpg")):
            _, _, q = text.partition(":")
            quality = int(q) if q else 95
            if not 1 <= quality <= 100:
                raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
            return cls("jpeg", quality)
        raise ValueError(f"unknown image format {text!r}: use keep, png, webp or jpeg:Q")

    def extension(self, input_ext: str) -> str:
        if self.kind == "keep":
            # keeping a lossy input format would destroy the noise; jpg inputs become png
            return input_ext if input_ext in ("png", "webp") else "png"
        return {"png": "png", "webp": "webp", "jpeg": "jpg"}[self.kind]


def encode(pixels: np.ndarray, ext: str, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    if ext == "png":
        image.save(buf, format="PNG", optimize=False, compress_level=6)
    elif ext == "webp":
        image.save(buf, format="WEBP", lossless=True, quality=100, method=4)
    elif ext in ("jpg", "jpeg"):
        image.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    else:
        raise ValueError(f"cannot encode {ext!r}")
    return buf.getvalue()


def center_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The square a 'resize shorter side + center crop' preprocessing keeps: (top, left, side, side)."""
    side = min(height, width)
    top = (height - side) // 2
    left = (width - side) // 2
    return top, left, side, side


def to_surrogate_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """The victim's usual preprocessing at ``size``: center square, resized (antialiased) to size x size."""
    top, left, side, _ = center_crop_box(*pixels.shape[:2])
    crop = Image.fromarray(pixels[top : top + side, left : left + side])
    if side != size:
        crop = crop.resize((size, size), Image.BICUBIC)
    return np.asarray(crop, dtype=np.uint8)


def apply_noise_native(pixels: np.ndarray, noise_levels: np.ndarray, epsilon: int) -> np.ndarray:
    """Add surrogate-resolution noise (SxSx3 int levels) to an image of any size.

    The noise is resized onto the center square that the victim's preprocessing keeps, so
    that after 'resize shorter side + center crop' it sees the optimised pattern; the
    border outside the square is left untouched. Rounded, clamped to +-epsilon and to
    0..255, so the L-inf bound holds exactly.
    """
    height, width = pixels.shape[:2]
    top, left, side, _ = center_crop_box(height, width)
    noise = noise_levels.astype(np.float32)
    if noise.shape[0] != side:
        channels = [
            np.asarray(Image.fromarray(noise[..., c], mode="F").resize((side, side), Image.BILINEAR))
            for c in range(3)
        ]
        noise = np.stack(channels, axis=-1)
    noise = np.clip(np.rint(noise), -epsilon, epsilon)
    out = pixels.astype(np.int16)
    out[top : top + side, left : left + side] += noise.astype(np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def max_abs_delta(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) if a.size else 0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    win = min(7, min(a.shape[:2]) // 2 * 2 + 1)
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=win))
