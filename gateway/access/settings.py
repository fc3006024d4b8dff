"""Settings of API keys, rate limits and the per-request timeout, mixed into gateway.settings.Settings
(same GANTRY_ names and `serve` flags as every other field; kept here so settings.py stays small)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode


class AccessSettings(BaseModel):
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys that may call the server, comma-separated or a JSON list (named key-1, key-2, … "
        "in logs); with a key configured here or in keys_file every route but /health needs one. "
        "Empty and no keys_file = the server is open.",
    )
    keys_file: Path | None = Field(
        default=None,
        description="YAML file of API keys (`keys:` entries with name, sha256 of the key, models, rpm, tpm, "
        "max_concurrent, expires); `python -m gateway keys create` adds entries. Re-read when it changes.",
    )
    docs_public: bool = Field(
        default=False, description="Serve /docs, /redoc and /openapi.json without a key when keys are configured."
    )
    metrics_require_key: bool = Field(
        default=False, description="Require an API key for /metrics when keys are configured (default: open)."
    )
    default_rpm: int | None = Field(
        default=None, ge=1, description="Requests per window for every key without its own rpm; unset = no limit."
    )
    default_tpm: int | None = Field(
        default=None,
        ge=1,
        description="Tokens (prompt + completion) per window for every key without its own tpm; unset = no limit.",
    )
    default_max_concurrent: int | None = Field(
        default=None, ge=1, description="Requests in flight per key without its own max_concurrent; unset = no limit."
    )
    rate_limit_window_seconds: int = Field(
        default=60,
        ge=1,
        description="Length of the rpm/tpm window in seconds (60: the limits are per minute, as their names say).",
    )
    rate_limit_storage: str = Field(
        default="memory://",
        description="Where rate-limit counters live: memory:// (this process) or redis://host:port/db (shared by "
        "every gateway replica using the same Redis).",
    )
    request_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Longest a generation request may run (from arrival to last byte); beyond it generation stops "
        "and the client gets 504 (or an error event in a stream). Unset = no limit.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [k.strip() for k in text.split(",") if k.strip()]
        return value

    @field_validator("keys_file", mode="after")
    @classmethod
    def _expand_keys_file(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None
