#!/usr/bin/env python3
"""Upload images to the kresize API, wait for the job, print every variant. Standard library only.

    python3 hack/submit.py --api http://localhost:30080 photos/*.jpg
    python3 hack/submit.py --targets '[{"name":"thumb","width":320,"height":320,"format":"webp"}]' a.jpg b.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

DEFAULT_TARGETS = [
    {"name": "thumb", "width": 320, "height": 320, "fit": "cover", "format": "webp"},
    {"name": "large", "width": 1600, "height": 1600, "fit": "inside", "format": "jpeg"},
]
TERMINAL = {"Succeeded", "PartiallyFailed", "Failed"}


def multipart(files: list[Path], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for path in files:
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def call(url: str, token: str, data: bytes | None = None, content_type: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default="http://localhost:30080")
    parser.add_argument("--targets", default=json.dumps(DEFAULT_TARGETS), help="JSON list of targets")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--token", default=os.environ.get("KRESIZE_TOKEN", ""),
                        help="API token (default: $KRESIZE_TOKEN)")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    body, content_type = multipart(args.files, {"targets": args.targets})
    try:
        created = call(f"{args.api}/v1/jobs", args.token, body, content_type)
    except urllib.error.HTTPError as error:
        print(f"upload refused: {error.code} {error.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    print(f"job {created['name']} created; following {args.api}{created['statusUrl']}")
    deadline = time.monotonic() + args.timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = call(f"{args.api}{created['statusUrl']}", args.token)
        progress = job["progress"]
        print(f"  {job['phase']:<16} {progress['done']}/{progress['total']} done, {progress['failed']} failed",
              flush=True)
        if job["phase"] in TERMINAL:
            break
        time.sleep(2)
    else:
        print(f"timed out after {args.timeout}s", file=sys.stderr)
        return 1
    print(f"\n{'file':<32} {'target':<10} {'size':>11} {'format':<6} {'bytes':>9}  url")
    for entry in job["files"]:
        if entry["status"] != "succeeded":
            print(f"{entry['filename'] or entry['source']:<32} FAILED: {entry['error']}")
        for out in entry["outputs"]:
            size = f"{out['width']}x{out['height']}"
            print(f"{entry['filename'] or entry['source']:<32} {out['target']:<10} {size:>11} {out['format']:<6} "
                  f"{out['bytes']:>9}  {out['url']}")
    print(f"\nphase: {job['phase']}")
    return 0 if job["phase"] in ("Succeeded", "PartiallyFailed") else 1


if __name__ == "__main__":
    sys.exit(main())
