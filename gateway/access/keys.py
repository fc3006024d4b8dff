"""API keys: plain keys from settings, hashed entries from a keys file, the admin key; authentication.

The keys file never holds a key, only its SHA-256 (a random 256-bit key needs no slow hash: nothing can be
guessed from its digest). A presented key is hashed and compared with every entry in constant time
(hmac.compare_digest), so response time tells nothing about how close a guess was. Keys are never logged:
entries are known by their names.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.access.principal import KeyLimits, Principal
from gateway.errors import AuthenticationError

logger = logging.getLogger(__name__)

KEY_PREFIX = "gk-"  # like OpenAI's sk-: a leaked key is recognisable in a scan
RELOAD_CHECK_SECONDS = 1.0  # how often the keys file's mtime is looked at (at most)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyEntry(BaseModel):
    """One entry of the keys file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Shown in logs, metrics and errors instead of the key.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key.")
    models: list[str] | None = Field(default=None, description="Model ids the key may use; unset = every non-private.")
    rpm: int | None = Field(default=None, ge=1, description="Requests per window; unset = the default_rpm setting.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per window; unset = the default_tpm setting.")
    max_concurrent: int | None = Field(default=None, ge=1, description="Requests in flight; unset = the default.")
    expires: datetime | None = Field(
        default=None, description="After this instant the key is refused (UTC if no zone)."
    )
    admin: bool = Field(default=False, description="May use every model and /admin, like GANTRY_ADMIN_KEY.")

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("expires", mode="after")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or datetime.now(timezone.utc)) >= self.expires


def read_keys_file(path: Path) -> list[KeyEntry]:
    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = data.get("keys") if isinstance(data, dict) else data
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a `keys:` list")
    parsed = [KeyEntry.model_validate(entry) for entry in entries]
    names = [entry.name for entry in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: key names must be unique")
    return parsed


def append_key(path: Path, entry: KeyEntry) -> None:
    """Add an entry to the keys file (created if missing), written whole to a temporary file then renamed,
    so a running server never reads half a file."""
    entries = read_keys_file(path)
    if any(existing.name == entry.name for existing in entries):
        raise ValueError(f"{path}: a key named {entry.name!r} exists already")
    rows = [e.model_dump(mode="json", exclude_none=True, exclude_defaults=True) for e in [*entries, entry]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump({"keys": rows}, sort_keys=False), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)


class KeyStore:
    """Every key the server accepts; the keys file is re-read when its modification time changes."""

    def __init__(
        self,
        plain_keys: list[str],
        keys_file: Path | None,
        *,
        admin_key: str | None = None,
        default_limits: KeyLimits | None = None,
    ) -> None:
        self.keys_file = keys_file
        self.default_limits = default_limits or KeyLimits()
        self._static = [KeyEntry(name=f"key-{i}", sha256=hash_key(k)) for i, k in enumerate(plain_keys, start=1)]
        if admin_key:
            self._static.append(KeyEntry(name="admin", sha256=hash_key(admin_key), admin=True))
        self._file_entries: list[KeyEntry] = []
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._reload(force=True)

    @property
    def enforced(self) -> bool:
        """Keys are required once API keys are configured (plain or file); the admin key alone guards only
        /admin, as before."""
        return any(not e.admin for e in self._static) or self.keys_file is not None

    def _reload(self, force: bool = False) -> None:
        if self.keys_file is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_CHECK_SECONDS:
            return
        with self._lock:
            self._checked = now
            try:
                mtime = self.keys_file.stat().st_mtime
            except FileNotFoundError:
                mtime = None
            if mtime == self._mtime and not force:
                return
            try:
                self._file_entries = read_keys_file(self.keys_file)
            except (OSError, ValueError) as exc:  # keep the last good keys: a typo must not open or lock the server
                logger.error("keys file %s not (re)loaded: %s", self.keys_file, exc)
                if force:
                    raise
                return
            self._mtime = mtime
            logger.info("keys file %s: %d key(s)", self.keys_file, len(self._file_entries))

    def entries(self) -> list[KeyEntry]:
        self._reload()
        return [*self._static, *self._file_entries]

    def authenticate(self, key: str) -> Principal:
        """The key's principal; AuthenticationError (401) for an unknown or expired key."""
        digest = hash_key(key).encode()
        found: KeyEntry | None = None
        for entry in self.entries():  # every entry compared: the time taken does not depend on which matched
            if hmac.compare_digest(digest, entry.sha256.encode()):
                found = entry
        if found is None:
            raise AuthenticationError("Incorrect API key provided.")
        if found.expired():
            raise AuthenticationError("This API key has expired.")
        return self.principal(found)

    def principal(self, entry: KeyEntry) -> Principal:
        if entry.admin:
            return Principal(name=entry.name, admin=True)  # operators are not rate limited
        defaults = self.default_limits
        limits = KeyLimits(
            rpm=entry.rpm if entry.rpm is not None else defaults.rpm,
            tpm=entry.tpm if entry.tpm is not None else defaults.tpm,
            max_concurrent=entry.max_concurrent if entry.max_concurrent is not None else defaults.max_concurrent,
        )
        models = frozenset(entry.models) if entry.models is not None else None
        return Principal(name=entry.name, models=models, limits=limits)
