"""Resize benchmark: kresize's pipeline against a naive Pillow reference, in the same process.

Both run single-threaded over the same images and targets, interleaved round by round, so their ratio holds
on a noisy machine. Reported per variant: images/s per core, per-image latency percentiles, and peak RSS of
a separate process that runs the variant alone (Pillow's buffers live outside tracemalloc's view).

    python bench/bench_resize.py [--rounds N] [--quick] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kresize_common.config import ImageLimits
from kresize_common.spec import Operations, Target
from kresize_resizer.pipeline import output_size, render
from PIL import Image, ImageOps

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "photos"
TARGETS = [Target("thumb", 320, 320, "cover", "webp", 80), Target("large", 1280, 1280, "inside", "jpeg", 85)]


def ours(data: bytes) -> int:
    return sum(len(v.data) for v in render(data, TARGETS, Operations(), ImageLimits()))


def reference(data: bytes) -> int:
    """What a hand-rolled worker typically does: full decode, rotate, resize each target, save."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    total = 0
    for target in TARGETS:
        size = output_size(image.width, image.height, target)
        if target.fit == "cover":
            variant = ImageOps.fit(image, size, Image.Resampling.LANCZOS)
        else:
            variant = image.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        variant.save(out, "WEBP" if target.format == "webp" else "JPEG", quality=target.quality)
        total += len(out.getvalue())
    return total


VARIANTS = {"kresize": ours, "reference": reference}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def peak_rss_mb(variant: str, corpus: Path) -> float:
    """Run one variant alone in a fresh process and return its peak RSS."""
    out = subprocess.run([sys.executable, __file__, "--memory-worker", variant, "--corpus", str(corpus)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--memory-worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    images = [p.read_bytes() for p in sorted(args.corpus.glob("*.jpg"))]
    if not images:
        sys.exit(f"no JPEGs in {args.corpus}")

    if args.memory_worker:
        for data in images:
            VARIANTS[args.memory_worker](data)
        print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return

    rounds = 2 if args.quick else args.rounds
    latencies: dict[str, list[float]] = {name: [] for name in VARIANTS}
    busy: dict[str, float] = dict.fromkeys(VARIANTS, 0.0)
    for fn in VARIANTS.values():  # warm-up: imports, codec initialisation
        fn(images[0])
    for _ in range(rounds):
        for name, fn in VARIANTS.items():  # interleaved, so drift hits both alike
            for data in images:
                started = time.perf_counter()
                fn(data)
                elapsed = time.perf_counter() - started
                latencies[name].append(elapsed)
                busy[name] += elapsed

    print(f"corpus: {args.corpus} ({len(images)} JPEGs, {sum(map(len, images)) / 1e6:.1f} MB); "
          f"targets: {', '.join(f'{t.name} {t.width}x{t.height} {t.fit} {t.format}' for t in TARGETS)}; "
          f"{rounds} interleaved rounds, one thread")
    header = f"{'variant':<10} {'images/s/core':>14} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'peak RSS MB':>12}"
    print(header)
    print("-" * len(header))
    rows = {}
    for name in VARIANTS:
        values = latencies[name]
        rows[name] = {
            "rate": len(values) / busy[name], "p50": percentile(values, 0.5) * 1000,
            "p90": percentile(values, 0.9) * 1000, "p99": percentile(values, 0.99) * 1000,
            "rss": peak_rss_mb(name, args.corpus),
        }
        r = rows[name]
        print(f"{name:<10} {r['rate']:>14.2f} {r['p50']:>8.1f} {r['p90']:>8.1f} {r['p99']:>8.1f} {r['rss']:>12.0f}")
    ours_row, ref_row = rows["kresize"], rows["reference"]
    print(f"{'ratio':<10} {ours_row['rate'] / ref_row['rate']:>13.2f}x "
          f"{ours_row['p50'] / ref_row['p50']:>7.2f}x {ours_row['p90'] / ref_row['p90']:>7.2f}x "
          f"{ours_row['p99'] / ref_row['p99']:>7.2f}x {ours_row['rss'] / ref_row['rss']:>11.2f}x")
    print(f"(median latency over all images: kresize {statistics.median(latencies['kresize']) * 1000:.1f} ms, "
          f"reference {statistics.median(latencies['reference']) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
