"""Small generated images for tests: random pixels, so each is a new original unless seeded the same."""

from __future__ import annotations

import io
import os
import random

from PIL import Image


def noise_png(side: int = 16, seed: object = None) -> bytes:
    """A side x side RGB PNG of random pixels; the same `seed` gives the same bytes."""
    pixels = os.urandom(side * side * 3) if seed is None else random.Random(str(seed)).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(out, "PNG")
    return out.getvalue()
