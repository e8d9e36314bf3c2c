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
    events_poll_seconds: float = Field(1.0, gt=0, le=60)  # how often a watched running job's files are read
    events_ping_seconds: float = Field(15.0, gt=0, le=300)  # SSE heartbeats, so proxies keep the stream open
    url_timeout_seconds: float = Field(20.0, gt=0, le=300)  # fetching one image URL, whole
    url_max_redirects: NonNegativeInt = 3
    # Hosts or CIDRs the URL fetcher may reach although they are private (an internal image server); comma-separated.
    url_allowed_hosts: str = ""

    @property
    def admins(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.admin_tenants.split(",") if t.strip())
