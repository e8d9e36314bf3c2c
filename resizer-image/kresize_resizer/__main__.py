"""`kresize-resizer`: `run` in a Job pod (S3), or `local` on a folder.

Exit codes: 0 when it ran (even if some images failed), 2 for usage errors, 1 for infrastructure errors.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml
from kresize_common.config import ImageLimits
from kresize_common.spec import SpecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kresize-resizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="process the shard of JOB_COMPLETION_INDEX (configured by KRESIZE_* env)")
    local = commands.add_parser("local", help="resize every image in a folder")
    local.add_argument("--spec", type=Path, required=True, help="a ResizeJob manifest (YAML or JSON)")
    local.add_argument("--input", type=Path, required=True, help="folder of images")
    local.add_argument("--output", type=Path, required=True, help="folder for the variants and results.json")
    args = parser.parse_args(argv)
    from .cores import limit_malloc_arenas

    limit_malloc_arenas()  # before the render workers start: the memory bound of docs/design.md holds

    if args.command == "run":
        from .worker import run_from_env

        return run_from_env()

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    from .local import load_spec, run_local

    try:
        spec = load_spec(args.spec)
    except OSError as error:
        parser.error(f"cannot read --spec {args.spec}: {error.strerror or error}")
    except yaml.YAMLError as error:
        parser.error(f"--spec {args.spec} is not YAML or JSON: {error}")
    except SpecError as error:
        parser.error(f"--spec {args.spec} is not a valid ResizeJob:\n  " + "\n  ".join(error.errors))
    if not args.input.is_dir():
        parser.error(f"--input {args.input} is not a folder")
    try:
        limits = ImageLimits.from_env()
        records = run_local(spec, args.input, args.output, limits)
    except (OSError, ValueError) as error:
        print(f"kresize-resizer: {error}", file=sys.stderr)
        return 1
    failed = sum(1 for r in records if r.status == "failed")
    print(f"{len(records)} images, {len(records) - failed} succeeded, {failed} failed; "
          f"results in {args.output / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
