"""A fast stand-in for the resizer in the scheduler benchmark: the real pod program (`kresize-resizer run`: shard
manifest, per-image checkpoints, SIGTERM handling, result records) with the image work replaced by a fixed
0.1 s sleep per image, so the benchmark measures scheduling, not Pillow."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

from kresize_resizer import worker

SECONDS_PER_IMAGE = 0.1


def render_nothing(*_: Any) -> Iterator[Any]:
    time.sleep(SECONDS_PER_IMAGE)
    return iter(())


if __name__ == "__main__":
    worker.render_each = render_nothing  # type: ignore[assignment]
    sys.exit(worker.run_from_env())
