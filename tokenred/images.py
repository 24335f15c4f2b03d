"""Decoding an image file into the RGB picture a model is meant to see.

``PIL.Image.convert("RGB")`` alone flattens some images wrongly: a 16-bit PNG (mode ``I;16`` or
``I``) is clipped to 8 bit, so almost every pixel becomes white, and a phone photo's EXIF
orientation is ignored. Here:

- the EXIF orientation is applied first (``ImageOps.exif_transpose``), as a photo viewer shows it;
- 16-bit grayscale (``I;16*``, ``I``) is scaled to 8 bit (value / 257, rounded), 32-bit float
  (``F``) is read as 0..1 when its maximum is at most 1 and as 0..255 otherwise;
- palette images with transparency go through RGBA; RGBA/LA drop their alpha and grayscale,
  CMYK and the rest convert as ``convert("RGB")`` does (what timm's loaders do).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(img):
    """``img`` (a PIL image) as 8-bit RGB, its meaning kept (see the module docstring)."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255)
                              .astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def open_rgb(path: str | os.PathLike):
    """Decode ``path`` fully (no lazy file handle left open) as 8-bit RGB."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return to_rgb(img)
