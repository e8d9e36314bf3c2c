"""Encoder settings: output bytes against encoding CPU on the corpus, to pick the pipeline's defaults.

Every corpus photo is resized once (Pillow, Lanczos) to the sizes of the three-target set (1280 inside, 320x240
cover, 64 cover); each setting then encodes every image, in interleaved rounds, timed with this process's CPU
time (`time.process_time`: libjpeg, libwebp and libaom run in the calling thread here, or in threads of this
process, which it counts too). Reported per setting: total bytes, and CPU per image (the median over rounds of
the CPU for every image, divided by their number), each relative to the pipeline's default (">1x" = more).

    python bench/bench_encoders.py [--rounds N] [--sizes 1280,320] [--formats jpeg,webp,avif,png]

The defaults follow one rule (docs/design.md, "Encoder settings"): the least CPU whose bytes are within 4% of the
smallest this encoder makes at that quality; settings within 5% of each other's CPU count as equal, and then the
encoder's own default stays.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path
from typing import Any

from kresize_resizer.pipeline import ENCODING, Encoding
from PIL import Image, ImageOps

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "photos"
QUALITY = 80

SETTINGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "jpeg": [("baseline", {}), ("optimize", {"optimize": True}), ("progressive", {"progressive": True}),
             ("optimize+progressive", {"optimize": True, "progressive": True})],
    "webp": [(f"method {m}", {"method": m}) for m in range(7)],
    "avif": [(f"speed {s}", {"speed": s}) for s in (4, 6, 7, 8, 9, 10)],
    "png": [(f"level {n}", {"compress_level": n}) for n in (1, 3, 6, 9)],
}
PILLOW_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF", "png": "PNG"}


def default_label(fmt: str, encoding: Encoding) -> str:
    if fmt == "jpeg":
        return {(False, False): "baseline", (True, False): "optimize", (False, True): "progressive",
                (True, True): "optimize+progressive"}[(encoding.jpeg_optimize, encoding.jpeg_progressive)]
    if fmt == "png":
        return f"level {encoding.png_compress_level}"
    return f"method {encoding.webp_method}" if fmt == "webp" else f"speed {encoding.avif_speed}"


def variants(sizes: list[int]) -> list[Image.Image]:
    images = []
    for path in sorted(CORPUS.glob("*.jpg")):
        photo = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        for side in sizes:
            if side >= 320:
                scale = min(1.0, side / max(photo.size))
                images.append(photo.resize((round(photo.width * scale), round(photo.height * scale)),
                                           Image.Resampling.LANCZOS))
            else:
                images.append(ImageOps.fit(photo, (side, side * 3 // 4 if side == 320 else side),
                                           Image.Resampling.LANCZOS))
    return images


def encode(image: Image.Image, fmt: str, options: dict[str, Any]) -> int:
    out = io.BytesIO()
    image.save(out, PILLOW_FORMAT[fmt], quality=QUALITY, **options)
    return len(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1280,320,64", help="1280: inside; 320: 320x240 cover; 64: 64 cover")
    parser.add_argument("--formats", default="jpeg,webp,avif,png")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    images = variants(sizes)
    megapixels = sum(i.width * i.height for i in images) / 1e6
    print(f"{len(images)} images ({megapixels:.1f} MP): corpus photos at {args.sizes}; quality {QUALITY}; "
          f"{args.rounds} interleaved rounds; CPU = process time")
    for fmt in args.formats.split(","):
        settings = SETTINGS[fmt]
        cpu: dict[str, list[float]] = {label: [] for label, _ in settings}  # per round: CPU over every image
        size: dict[str, int] = {}
        for label, options in settings:  # warm-up, and the bytes (deterministic)
            size[label] = sum(encode(image, fmt, options) for image in images)
        for _ in range(args.rounds):
            spent = dict.fromkeys(cpu, 0.0)
            for image in images:
                for label, options in settings:  # interleaved per image, so drift hits every setting alike
                    started = time.process_time()
                    encode(image, fmt, options)
                    spent[label] += time.process_time() - started
            for label in cpu:
                cpu[label].append(spent[label])
        base = default_label(fmt, ENCODING)
        base_ms = statistics.median(cpu[base]) * 1000 / len(images)
        print(f"\n{fmt} (relative to the default, {base})")
        print(f"{'setting':<22} {'bytes':>10} {'bytes vs default':>17} {'CPU ms/image':>13} {'CPU vs default':>15}")
        for label, _ in settings:
            ms = statistics.median(cpu[label]) * 1000 / len(images)
            print(f"{label:<22} {size[label]:>10} {size[label] / size[base]:>16.3f}x {ms:>13.2f} "
                  f"{ms / base_ms:>14.2f}x")

if __name__ == "__main__":
    main()
