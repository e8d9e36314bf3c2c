"""API configuration from KRESIZE_* environment variables (documented in the README), typed and validated."""

from __future__ import annotations

from typing import Literal

from kresize_common.typed_settings import CommonSettings
from pydantic import Field, NonNegativeInt, PositiveInt

from .auth import TOKENS_DIR

# SigV4 presigned URLs are valid for at most 7 days; kresize keeps download links to a day at most.
MAX_PRESIGN_EXPIRY_SECONDS = 86400


class ApiSettings(CommonSettings):
    api_host: str = "127.0.0.1"
    api_port: PositiveInt = 8080
    metrics_port: NonNegativeInt = 9090  # 0: no metrics endpoint
    max_files: PositiveInt = 1000
    max_request_bytes: PositiveInt = 512 * 1024 * 1024
    presign_expiry_seconds: int = Field(3600, ge=1, le=MAX_PRESIGN_EXPIRY_SECONDS)
    kube_timeout_seconds: PositiveInt = 10
    max_concurrent_uploads: PositiveInt = 4
    auth: Literal["token", "none"] = "token"  # none: local development only
    auth_tokens_dir: str = TOKENS_DIR
    admin_tenants: str = "admin"  # comma-separated

    @property
    def admins(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.admin_tenants.split(",") if t.strip())
