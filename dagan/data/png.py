"""PNG bytes <-> numpy arrays: the library's one encoder and decoder of image bytes.

Prepared shards hold every label map, instance map and photo as PNG bytes (docs/ARCHITECTURE.md,
"Data on disk"); ``generate`` writes PNG files, and the served model takes label maps and returns
images as PNG bytes. Opening is lazy: :func:`open_image` reads the header only, so that a caller
can check the size of untrusted bytes before any pixel is decoded (``generate`` and the served
model do: :func:`dagan.inference.decode_id_map`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(array: np.ndarray) -> bytes:
    """(H, W) ids (uint8 / uint16) or (H, W, 3) uint8 RGB -> lossless PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def open_image(data: bytes) -> Image.Image:
    """Image bytes (PNG, or any format Pillow reads) -> a Pillow image whose pixels are not decoded yet."""
    return Image.open(io.BytesIO(data))


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes of our own (the prepared shards) -> a writable array (torch.from_numpy needs one)."""
    return np.array(open_image(data))
