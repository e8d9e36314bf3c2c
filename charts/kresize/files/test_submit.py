"""`helm test` check: submit a tiny generated PNG through the API and wait for the job to succeed.

Standard library only (it runs in the resizer image, on a read-only root filesystem). Exits 0 when the
ResizeJob reaches phase Succeeded, 1 on any other terminal phase, an error or the timeout.
"""

import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib

API = os.environ["KRESIZE_API_URL"].rstrip("/")
TIMEOUT = float(os.environ.get("KRESIZE_TEST_TIMEOUT_SECONDS", "300"))
# The admin tenant's token, from the tokens Secret (absent when the chart runs with api.auth.enabled=false).
AUTH = {"Authorization": f"Bearer {os.environ['KRESIZE_TOKEN']}"} if os.environ.get("KRESIZE_TOKEN") else {}
TERMINAL_FAILURES = {"Failed", "PartiallyFailed"}


def tiny_png(width: int = 64, height: int = 48) -> bytes:
    """An RGB gradient as a valid PNG, built with zlib only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 4 % 256, y * 5 % 256, 128)) for x in range(width)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def call(request: urllib.request.Request) -> dict:
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def job_name(body: dict) -> str:
    return body.get("name") or body.get("metadata", {}).get("name") or ""


def job_phase(body: dict) -> str:
    return body.get("phase") or body.get("status", {}).get("phase") or ""


def main() -> int:
    deadline = time.monotonic() + TIMEOUT
    body, content_type = multipart({"width": "32", "height": "24"}, [("files", "helm-test.png", tiny_png())])
    name = ""
    while not name:
        request = urllib.request.Request(
            f"{API}/v1/jobs", data=body, method="POST", headers={"Content-Type": content_type, **AUTH}
        )
        try:
            created = call(request)
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            if exc.code < 500 or time.monotonic() > deadline:
                print(f"FAIL: POST /v1/jobs answered {exc.code}: {detail}")
                return 1
            print(f"POST /v1/jobs answered {exc.code}, retrying: {detail}")
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                print(f"FAIL: the API at {API} is unreachable: {exc}")
                return 1
            print(f"API not reachable yet ({exc}), retrying")
        else:
            name = job_name(created)
            if not name:
                print(f"FAIL: no job name in the answer to POST /v1/jobs: {created}")
                return 1
            print(f"submitted ResizeJob {name}")
            break
        time.sleep(3)

    phase = ""
    while time.monotonic() < deadline:
        try:
            status = call(urllib.request.Request(f"{API}/v1/jobs/{name}", headers=AUTH))
        except (urllib.error.URLError, OSError) as exc:
            print(f"GET /v1/jobs/{name} failed, retrying: {exc}")
        else:
            new_phase = job_phase(status)
            if new_phase != phase:
                phase = new_phase
                print(f"{name}: phase {phase or '(none yet)'}")
            if phase == "Succeeded":
                print("PASS")
                return 0
            if phase in TERMINAL_FAILURES:
                print(f"FAIL: {name} ended in phase {phase}: {json.dumps(status)[:2000]}")
                return 1
        time.sleep(2)
    print(f"FAIL: {name} did not succeed within {TIMEOUT:.0f}s (last phase {phase or 'none'})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
