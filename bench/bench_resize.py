"""Resize benchmark: kresize's pipeline against libvips (pyvips) and a naive Pillow worker, in the same run.

What it measures, per workload and variant:
- CPU time per image: this process's CPU time (`time.process_time`, every thread of it: libvips' workers, the
  codecs), not wall clock. Rounds are interleaved (every variant over every image, then the next round, the
  variants' order rotating), and the figure is the median over rounds of CPU per image.
- Peak RSS: each variant alone, in its own fresh process (`--memory-worker`), over the workload's images; read
  from that process's VmHWM, which starts afresh at exec (ru_maxrss would carry the parent's high-water mark).
- Ratios against libvips, labelled with their direction, and the goals: CPU <= 0.9x libvips on every
  workload, peak RSS <= libvips'.

The variants do the same work with the same output settings (the pipeline's `Encoding` defaults, the target's
quality, metadata stripped, alpha flattened on white for JPEG):
- kresize: `kresize_resizer.pipeline.render`;
- libvips: decode once at the largest target's size (`thumbnail_buffer`: shrink-on-load, auto-rotation, sRGB),
  each smaller target from the previous one (`thumbnail_image`), libvips' own encoders; one libvips thread
  (VIPS_CONCURRENCY=1: its least CPU per image) and no operation cache;
- naive: what a hand-rolled Pillow worker does: full decode, rotate, each target resized from the full image
  (`ImageOps.fit` for cover), save.

Workloads: one small thumbnail (320x320 cover WebP) and the three-target set (1280 inside JPEG q80 + 320x240
cover WebP q80 + 64 cover JPEG q80) on the corpus photos; the three-target set on a 24 MP JPEG (a corpus photo
upscaled once into a temporary folder) and on a 2048x1536 PNG with an alpha gradient.

    python bench/bench_resize.py [--rounds N] [--quick] [--workloads thumbnail,three,24mp,alpha]

A batch through `kresize-resizer run` with 1 and 2 CPUs (images/s and the 2-vs-1 ratio): bench/bench_cores.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("VIPS_CONCURRENCY", "1")  # before libvips starts (pyvips is imported lazily)

from kresize_common.config import ImageLimits
from kresize_common.spec import Operations, Target
from kresize_resizer.pipeline import ENCODING, output_size, render
from PIL import Image, ImageOps

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "photos"
LIMITS = ImageLimits()
THUMBNAIL = [Target("thumb", 320, 320, "cover", "webp", 80)]
THREE = [Target("large", 1280, 1280, "inside", "jpeg", 80), Target("card", 320, 240, "cover", "webp", 80),
         Target("icon", 64, 64, "cover", "jpeg", 80)]
WORKLOADS: dict[str, tuple[str, list[Target]]] = {
    "thumbnail": ("one 320x320 cover WebP q80, corpus photos", THUMBNAIL),
    "three": ("1280 inside JPEG + 320x240 cover WebP + 64 cover JPEG (q80), corpus photos", THREE),
    "24mp": ("the three targets, a 24 MP JPEG (5657x4243)", THREE),
    "alpha": ("the three targets, a 2048x1536 PNG with alpha", THREE),
}
CPU_GOAL = 0.9  # kresize CPU per image <= 0.9x libvips'


def workload_files(name: str, data_dir: Path) -> list[Path]:
    """The workload's input files; the generated ones are made once into `data_dir`."""
    if name in ("thumbnail", "three"):
        return sorted(CORPUS.glob("*.jpg"))
    path = data_dir / ("24mp.jpg" if name == "24mp" else "alpha.png")
    if not path.exists():
        if name == "24mp":
            photo = Image.open(CORPUS / "jolla.jpg").convert("RGB")  # 3264x2448, 8 MP
            photo.resize((5657, 4243), Image.Resampling.LANCZOS).save(path, "JPEG", quality=90)
        else:
            photo = Image.open(CORPUS / "Reconyx_HC500_Hyperfire.jpg").convert("RGB")  # 2048x1536
            photo.putalpha(Image.linear_gradient("L").resize(photo.size))
            photo.save(path, "PNG")
    return [path]


def kresize(data: bytes, targets: Sequence[Target]) -> int:
    return sum(len(v.data) for v in render(data, targets, Operations(), LIMITS))


def _pillow_save(image: Image.Image, target: Target) -> bytes:
    out = io.BytesIO()
    if target.format == "jpeg":
        if "A" in image.mode:
            flat = Image.new("RGB", image.size, target.background)
            flat.paste(image, mask=image.getchannel("A"))
            image = flat
        image.save(out, "JPEG", quality=target.quality, optimize=ENCODING.jpeg_optimize,
                   progressive=ENCODING.jpeg_progressive)
    else:
        image.save(out, "WEBP", quality=target.quality, method=ENCODING.webp_method)
    return out.getvalue()


def naive(data: bytes, targets: Sequence[Target]) -> int:
    """What a hand-rolled worker typically does: full decode, rotate, resize each target from it, save."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
    total = 0
    for target in targets:
        size = output_size(image.width, image.height, target)
        if target.fit == "cover":
            variant = ImageOps.fit(image, size, Image.Resampling.LANCZOS)
        else:
            variant = image.resize(size, Image.Resampling.LANCZOS)
        total += len(_pillow_save(variant, target))
    return total


def _vips() -> Any:
    import pyvips  # dev/bench only: requirements-dev.txt (pyvips, pyvips-binary)

    pyvips.cache_set_max(0)  # no operation cache: every round does the work again
    return pyvips


def libvips(data: bytes, targets: Sequence[Target]) -> int:
    """Decode once at the largest target's size, derive each smaller target from the previous one."""
    pyvips = _vips()
    total = 0
    previous = None
    for target in sorted(targets, key=lambda t: -(t.width or 0) * (t.height or 0)):
        options: dict[str, Any] = {"height": target.height, "size": "down"}
        if target.fit == "cover":
            options["crop"] = "centre"
        if previous is None:
            image = pyvips.Image.thumbnail_buffer(data, target.width, **options).copy_memory()
        else:
            image = previous.thumbnail_image(target.width, **options).copy_memory()
        previous = image
        if target.format == "jpeg":
            if image.hasalpha():
                image = image.flatten(background=list(target.background))
            out = image.jpegsave_buffer(Q=target.quality, optimize_coding=ENCODING.jpeg_optimize,
                                        interlace=ENCODING.jpeg_progressive, keep="none")
        else:
            out = image.webpsave_buffer(Q=target.quality, effort=ENCODING.webp_method, keep="none")
        total += len(out)
    return total


VARIANTS: dict[str, Callable[[bytes, Sequence[Target]], int]] = {"kresize": kresize, "libvips": libvips,
                                                                 "naive": naive}


def peak_rss_mb(variant: str, workload: str, data_dir: Path) -> float:
    """The variant alone over the workload, in a fresh process: its VmHWM."""
    out = subprocess.run([sys.executable, __file__, "--memory-worker", variant, "--workloads", workload,
                          "--data", str(data_dir)], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)["peak_rss_mb"])


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_cpu(images: list[bytes], targets: Sequence[Target], rounds: int) -> dict[str, float]:
    """Median over rounds of CPU seconds per image, per variant."""
    names = list(VARIANTS)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up: imports, codec initialisation
        VARIANTS[name](images[0], targets)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # rotate who goes first
            started = time.process_time()
            for data in images:
                VARIANTS[name](data, targets)
            per_round[name].append((time.process_time() - started) / len(images))
    return {name: statistics.median(values) for name, values in per_round.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--memory-worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workloads = args.workloads.split(",")

    if args.memory_worker:
        (workload,) = workloads
        targets = WORKLOADS[workload][1]
        for path in workload_files(workload, args.data):
            VARIANTS[args.memory_worker](path.read_bytes(), targets)
        print(json.dumps({"peak_rss_mb": vm_hwm_mb()}))
        return

    rounds = 2 if args.quick else args.rounds
    pyvips = _vips()
    print(f"Pillow {Image.__version__}, libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)} "
          f"(VIPS_CONCURRENCY={os.environ['VIPS_CONCURRENCY']}); {rounds} interleaved rounds; CPU = process time "
          "per image, median over rounds; peak RSS = VmHWM of a fresh process per variant")
    print(f"encoders: JPEG optimize={ENCODING.jpeg_optimize} progressive={ENCODING.jpeg_progressive}, WebP "
          f"method {ENCODING.webp_method}")
    summary = []
    with tempfile.TemporaryDirectory(prefix="kresize-bench-") as tmp:
        data_dir = Path(tmp)
        for workload in workloads:
            title, targets = WORKLOADS[workload]
            images = [path.read_bytes() for path in workload_files(workload, data_dir)]
            cpu = measure_cpu(images, targets, rounds)
            rss = {name: peak_rss_mb(name, workload, data_dir) for name in VARIANTS}
            print(f"\n{workload}: {title} ({len(images)} image{'s' if len(images) > 1 else ''})")
            header = (f"{'variant':<9} {'CPU ms/image':>13} {'CPU vs libvips':>15} {'peak RSS MB':>12} "
                      f"{'RSS vs libvips':>15}")
            print(header)
            print("-" * len(header))
            for name in VARIANTS:
                print(f"{name:<9} {cpu[name] * 1000:>13.1f} {cpu[name] / cpu['libvips']:>14.2f}x "
                      f"{rss[name]:>12.0f} {rss[name] / rss['libvips']:>14.2f}x")
            print("(ratios: variant / libvips; below 1x = less CPU or memory than libvips)")
            summary.append((workload, cpu["kresize"] / cpu["libvips"], rss["kresize"], rss["libvips"]))

    print("\ngoals (kresize against libvips):")
    for workload, ratio, ours, theirs in summary:
        cpu_verdict = "met" if ratio <= CPU_GOAL else "MISSED"
        rss_verdict = "met" if ours <= theirs else "MISSED"
        print(f"  {workload:<10} CPU {ratio:.2f}x libvips' (goal <= {CPU_GOAL}x): {cpu_verdict}; "
              f"peak RSS {ours:.0f} MB vs libvips' {theirs:.0f} MB (goal <=): {rss_verdict}")
    print("  2-CPU scaling (goal >= 1.8x): bench/bench_cores.py, next in make bench")


if __name__ == "__main__":
    main()
