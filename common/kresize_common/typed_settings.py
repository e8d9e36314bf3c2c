"""Typed, validated settings shared by the API and the operator (pydantic-settings).

Imported by those two only: they install pydantic-settings. The resizer, whose image stays lean, reads the
same variables with config.py's standard-library readers; the defaults come from the same dataclasses.
Every variable is `KRESIZE_<FIELD>`; `load()` reports every bad one at once and exits.
"""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, PositiveInt, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .config import ImageLimits, S3Settings, default_namespace

T = TypeVar("T", bound=BaseSettings)


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KRESIZE_", extra="ignore", frozen=True)

    namespace: str = Field(default_factory=default_namespace)
    log_format: Literal["json", "text"] = "json"
    s3_endpoint: str = "localhost:9000"
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_bucket: str = "kresize"
    s3_public_endpoint: str = ""
    max_pixels: PositiveInt = ImageLimits.max_pixels
    max_file_bytes: PositiveInt = ImageLimits.max_bytes
    max_output_pixels: PositiveInt = ImageLimits.max_output_pixels
    max_total_output_pixels: PositiveInt = ImageLimits.max_total_output_pixels

    @property
    def s3(self) -> S3Settings:
        scheme = "https" if self.s3_secure else "http"
        return S3Settings(
            endpoint=self.s3_endpoint, access_key=self.s3_access_key.get_secret_value(),
            secret_key=self.s3_secret_key.get_secret_value(), secure=self.s3_secure, region=self.s3_region,
            bucket=self.s3_bucket, public_endpoint=self.s3_public_endpoint or f"{scheme}://{self.s3_endpoint}")

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_pixels, max_bytes=self.max_file_bytes,
                           max_output_pixels=self.max_output_pixels,
                           max_total_output_pixels=self.max_total_output_pixels)


def load(cls: type[T], program: str) -> T:
    """The settings from the environment, or exit 2 naming every bad variable and why."""
    try:
        return cls()
    except ValidationError as error:
        lines = [f"  KRESIZE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in error.errors()]
        print(f"{program}: bad configuration ({len(lines)} variables):\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
