"""API configuration from environment variables (documented in the README)."""

from __future__ import annotations

from dataclasses import dataclass

from kresize_common.config import ImageLimits, S3Settings, default_namespace, env_int, env_str

from .auth import TOKENS_DIR

# SigV4 presigned URLs are valid for at most 7 days; kresize keeps download links to a day at most.
MAX_PRESIGN_EXPIRY_SECONDS = 86400


@dataclass(frozen=True)
class ApiSettings:
    s3: S3Settings
    limits: ImageLimits
    namespace: str
    host: str = "127.0.0.1"
    port: int = 8080
    max_files: int = 1000
    max_request_bytes: int = 512 * 1024 * 1024
    presign_expiry_seconds: int = 3600
    kube_timeout_seconds: int = 10
    max_concurrent_uploads: int = 4
    auth: str = "token"  # or "none", for local development only
    tokens_dir: str = TOKENS_DIR
    admin_tenants: frozenset[str] = frozenset({"admin"})

    @classmethod
    def from_env(cls) -> ApiSettings:
        return cls(
            s3=S3Settings.from_env(),
            limits=ImageLimits.from_env(),
            namespace=default_namespace(),
            host=env_str("KRESIZE_API_HOST", cls.host),
            port=env_int("KRESIZE_API_PORT", cls.port, minimum=1),
            max_files=env_int("KRESIZE_MAX_FILES", cls.max_files, minimum=1),
            max_request_bytes=env_int("KRESIZE_MAX_REQUEST_BYTES", cls.max_request_bytes, minimum=1),
            presign_expiry_seconds=_presign_expiry(),
            kube_timeout_seconds=env_int("KRESIZE_KUBE_TIMEOUT_SECONDS", cls.kube_timeout_seconds, minimum=1),
            max_concurrent_uploads=env_int("KRESIZE_MAX_CONCURRENT_UPLOADS", cls.max_concurrent_uploads, minimum=1),
            auth=_auth_mode(),
            tokens_dir=env_str("KRESIZE_AUTH_TOKENS_DIR", cls.tokens_dir),
            admin_tenants=frozenset(
                t.strip() for t in env_str("KRESIZE_ADMIN_TENANTS", "admin").split(",") if t.strip()),
        )


def _presign_expiry() -> int:
    value = env_int("KRESIZE_PRESIGN_EXPIRY_SECONDS", ApiSettings.presign_expiry_seconds, minimum=1)
    if value > MAX_PRESIGN_EXPIRY_SECONDS:
        raise ValueError(f"KRESIZE_PRESIGN_EXPIRY_SECONDS must be at most {MAX_PRESIGN_EXPIRY_SECONDS} (a day), "
                         f"got {value}")
    return value


def _auth_mode() -> str:
    mode = env_str("KRESIZE_AUTH", "token").lower()
    if mode not in ("token", "none"):
        raise ValueError(f"KRESIZE_AUTH must be token or none, got {mode!r}")
    return mode
