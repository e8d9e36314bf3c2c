"""API configuration from environment variables (documented in the README)."""

from __future__ import annotations

from dataclasses import dataclass

from kresize_common.config import ImageLimits, S3Settings, default_namespace, env_int, env_str


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
            presign_expiry_seconds=env_int("KRESIZE_PRESIGN_EXPIRY_SECONDS", cls.presign_expiry_seconds, minimum=1),
            kube_timeout_seconds=env_int("KRESIZE_KUBE_TIMEOUT_SECONDS", cls.kube_timeout_seconds, minimum=1),
        )
