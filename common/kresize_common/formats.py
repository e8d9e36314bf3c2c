"""Image formats, in one table: what kresize accepts, how it names and serves it, what it writes.

The API (what an upload may be), the resizer (what it decodes, what `format: original` writes, the content
type of each variant) and the S3 layout (extensions) all read these tables and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputFormat:
    pillow: str  # Image.format as Pillow reports it
    extension: str  # of the content-addressed original (originals/<sha256>.<ext>)
    content_type: str
    original_output: str  # what `format: original` writes: an OUTPUTS key
    # The fraction of KRESIZE_MAX_PIXELS an image of this format may have (1/pixel_share): a decoder that needs
    # several times the memory per pixel of the others gets less (Pillow's WebP decoder: ~16 bytes per pixel).
    pixel_share: int = 1

    def max_pixels(self, limit: int) -> int:
        return limit // self.pixel_share


@dataclass(frozen=True)
class OutputFormat:
    name: str  # as in a target's `format`
    pillow: str  # Pillow's encoder
    extension: str
    content_type: str


OUTPUTS = {f.name: f for f in (
    OutputFormat("jpeg", "JPEG", "jpg", "image/jpeg"),
    OutputFormat("png", "PNG", "png", "image/png"),
    OutputFormat("webp", "WEBP", "webp", "image/webp"),
    OutputFormat("avif", "AVIF", "avif", "image/avif"),
)}

INPUTS = {f.pillow: f for f in (
    InputFormat("JPEG", "jpg", "image/jpeg", "jpeg"),
    # Camera JPEGs with extra frames (Multi-Picture Format): Pillow calls them MPO; the first frame is the photo.
    InputFormat("MPO", "jpg", "image/jpeg", "jpeg"),
    InputFormat("PNG", "png", "image/png", "png"),
    InputFormat("WEBP", "webp", "image/webp", "webp", pixel_share=2),
    InputFormat("AVIF", "avif", "image/avif", "avif"),
    # No GIF, TIFF or BMP encoder is offered: `original` writes them as PNG (lossless, alpha kept).
    InputFormat("GIF", "gif", "image/gif", "png"),
    InputFormat("TIFF", "tiff", "image/tiff", "png"),
    InputFormat("BMP", "bmp", "image/bmp", "png"),
)}

ACCEPTED_NAMES = "JPEG, PNG, WebP, AVIF, GIF, TIFF or BMP"
