"""Configuration from environment variables, shared by the API, the operator and the resizer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def default_namespace() -> str:
    """KRESIZE_NAMESPACE, else the pod's own namespace, else `default`."""
    explicit = os.environ.get("KRESIZE_NAMESPACE", "").strip()
    if explicit:
        return explicit
    try:
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    access_key: str
    secret_key: str
    secure: bool = False
    region: str = "us-east-1"
    bucket: str = "kresize"
    public_endpoint: str = ""

    @classmethod
    def from_env(cls) -> S3Settings:
        endpoint = env_str("KRESIZE_S3_ENDPOINT", "localhost:9000")
        secure = env_bool("KRESIZE_S3_SECURE", False)
        scheme = "https" if secure else "http"
        return cls(
            endpoint=endpoint,
            access_key=os.environ.get("KRESIZE_S3_ACCESS_KEY", ""),
            secret_key=os.environ.get("KRESIZE_S3_SECRET_KEY", ""),
            secure=secure,
            region=env_str("KRESIZE_S3_REGION", "us-east-1"),
            bucket=env_str("KRESIZE_S3_BUCKET", "kresize"),
            public_endpoint=env_str("KRESIZE_S3_PUBLIC_ENDPOINT", f"{scheme}://{endpoint}"),
        )

    def __repr__(self) -> str:  # never print credentials
        return f"S3Settings(endpoint={self.endpoint!r}, bucket={self.bucket!r}, secure={self.secure})"


@dataclass(frozen=True)
class ImageLimits:
    """Per-image safety limits, on input and on output (imgproxy's 50 MP default for input pixels).

    With the defaults a resizer pod stays inside 1 GiB on any input that passes them: see docs/design.md,
    "Memory bounds".
    """

    max_pixels: int = 50_000_000
    max_bytes: int = 50 * 1024 * 1024
    max_output_pixels: int = 50_000_000  # one variant
    max_total_output_pixels: int = 100_000_000  # all variants of one image together

    @classmethod
    def from_env(cls) -> ImageLimits:
        return cls(
            max_pixels=env_int("KRESIZE_MAX_PIXELS", cls.max_pixels, minimum=1),
            max_bytes=env_int("KRESIZE_MAX_FILE_BYTES", cls.max_bytes, minimum=1),
            max_output_pixels=env_int("KRESIZE_MAX_OUTPUT_PIXELS", cls.max_output_pixels, minimum=1),
            max_total_output_pixels=env_int("KRESIZE_MAX_TOTAL_OUTPUT_PIXELS", cls.max_total_output_pixels,
                                            minimum=1),
        )

    def output_errors(self, targets: list[dict]) -> list[str]:
        """What a spec's targets ask beyond the output limits, where their size is known before any image is
        seen (both width and height given); the resizer checks every image's real output sizes again."""
        errors, total = [], 0
        for target in targets:
            if target.get("width") is None or target.get("height") is None:
                continue
            pixels = int(target["width"]) * int(target["height"])
            total += pixels
            if pixels > self.max_output_pixels:
                errors.append(f"target {target.get('name')!r}: {target['width']}x{target['height']} = {pixels} "
                              f"pixels exceeds {self.max_output_pixels} per variant (KRESIZE_MAX_OUTPUT_PIXELS)")
        if total > self.max_total_output_pixels and not errors:
            errors.append(f"the targets add up to {total} pixels per image, over {self.max_total_output_pixels} "
                          "(KRESIZE_MAX_TOTAL_OUTPUT_PIXELS)")
        return errors

    def job_env(self) -> list[dict[str, str]]:
        """The limits as env of a Job's pods (the operator passes its own limits on)."""
        return [
            {"name": "KRESIZE_MAX_PIXELS", "value": str(self.max_pixels)},
            {"name": "KRESIZE_MAX_FILE_BYTES", "value": str(self.max_bytes)},
            {"name": "KRESIZE_MAX_OUTPUT_PIXELS", "value": str(self.max_output_pixels)},
            {"name": "KRESIZE_MAX_TOTAL_OUTPUT_PIXELS", "value": str(self.max_total_output_pixels)},
        ]
