"""Bearer-token authentication and tenants.

Tokens live in a folder, one file per token: the file's name is the tenant, its content the token. That is
what a Kubernetes Secret mounted as a volume looks like (the chart mounts `<release>-api-tokens` at
TOKENS_DIR), so adding a tenant is one `kubectl patch secret`, picked up without a restart.
Tenants named in KRESIZE_ADMIN_TENANTS are admins: they see every job, including those made with kubectl.

Tokens are compared as SHA-256 digests with `hmac.compare_digest`, against every known token, so neither
the comparison nor the lookup leaks timing; a token is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kresize_common.spec import TENANT_LABEL

log = logging.getLogger("kresize.api.auth")

TOKENS_DIR = "/var/run/secrets/kresize.dev/api-tokens"
# A tenant name becomes a label value (kresize.dev/tenant), so it must be one.
TENANT_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Principal:
    tenant: str
    admin: bool

    def owns(self, labels: dict[str, str] | None) -> bool:
        """Whether this caller may see a job with these labels (admins see all, others their own)."""
        return self.admin or (labels or {}).get(TENANT_LABEL) == self.tenant


ANONYMOUS_ADMIN = Principal("anonymous", admin=True)  # KRESIZE_AUTH=none: local development only


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenStore:
    """The tokens folder, re-read when it changes (checked at most every `refresh_seconds`)."""

    def __init__(self, folder: Path, admins: frozenset[str], refresh_seconds: float = 10.0):
        self.folder, self.admins, self.refresh_seconds = folder, admins, refresh_seconds
        self._lock = threading.Lock()
        self._digests: list[tuple[bytes, str]] = []
        self._checked = 0.0
        self._stamp: tuple[tuple[str, int], ...] | None = None
        self.reload()
        if not self._digests:
            raise ValueError(f"no API tokens in {folder}: mount the tokens Secret there, or set KRESIZE_AUTH=none "
                             "for local development")

    def _files(self) -> list[Path]:
        # Kubernetes' volume layout has hidden `..data` links beside the key files: skip dotfiles.
        return sorted(p for p in self.folder.iterdir() if not p.name.startswith(".") and p.is_file())

    def reload(self) -> None:
        files = self._files()
        stamp = tuple((p.name, p.stat().st_mtime_ns) for p in files)
        if stamp == self._stamp:
            return
        digests = []
        for path in files:
            token = path.read_text().strip()
            if not TENANT_NAME.match(path.name):
                log.error("ignoring token file %r: not a valid tenant name (letters, digits, . _ -)", path.name)
            elif len(token) < MIN_TOKEN_LENGTH:
                log.error("ignoring the token of tenant %s: shorter than %d characters", path.name,
                          MIN_TOKEN_LENGTH)
            else:
                digests.append((_digest(token), path.name))
        self._digests, self._stamp = digests, stamp
        log.info("loaded %d API tokens (tenants: %s)", len(digests), ", ".join(name for _, name in digests))

    def authenticate(self, token: str) -> Principal | None:
        now = time.monotonic()
        with self._lock:
            if now - self._checked > self.refresh_seconds:
                self._checked = now
                try:
                    self.reload()
                except OSError as error:  # keep the last good set while the volume is being updated
                    log.warning("could not re-read the API tokens: %s", error)
            digests = self._digests
        given = _digest(token)
        tenant = None
        for digest, name in digests:  # no early exit: every token is compared
            if hmac.compare_digest(given, digest):
                tenant = name
        return None if tenant is None else Principal(tenant, admin=tenant in self.admins)


_QUERY_TOKEN = re.compile(r"(access_token=)[^&\s\"]*")


class RedactQueryTokens(logging.Filter):
    """Browsers' EventSource sends its token in the query (?access_token=): keep it out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_QUERY_TOKEN.sub(r"\1REDACTED", a) if isinstance(a, str) else a
                                for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _QUERY_TOKEN.sub(r"\1REDACTED", record.msg)
        return True
