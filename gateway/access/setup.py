"""Wires keys, limits and the access middleware into an app (called from gateway.app.install_middleware)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from gateway.access.keys import KeyStore
from gateway.access.limiter import RateLimiter
from gateway.access.middleware import AccessMiddleware
from gateway.access.principal import KeyLimits

logger = logging.getLogger(__name__)


def install_access(app: FastAPI, settings) -> None:
    admin_key = settings.admin_key.get_secret_value() if settings.admin_key is not None else None
    keys = KeyStore(
        [key.get_secret_value() for key in settings.api_keys],
        settings.keys_file,
        admin_key=admin_key,
        default_limits=KeyLimits(settings.default_rpm, settings.default_tpm, settings.default_max_concurrent),
    )
    # a stream's slot is held until it ends, at most the request timeout (or an hour) with Redis
    limiter = RateLimiter(
        settings.rate_limit_storage, settings.rate_limit_window_seconds, lease_seconds=settings.request_timeout_seconds
    )
    app.state.keys = keys
    app.state.rate_limiter = limiter
    if keys.enforced:
        storage = settings.rate_limit_storage.split("://", 1)[0]
        logger.info("API keys required (%d configured; rate-limit storage: %s)", len(keys.entries()), storage)
    else:
        logger.warning(
            "No API key configured (GANTRY_API_KEYS / GANTRY_KEYS_FILE): every client that reaches this port may "
            "use every model."
        )
    registry = app.state.registry
    app.add_middleware(
        AccessMiddleware,
        keys=keys,
        limiter=limiter,
        has_public_model=registry.has_public,
        is_public_model=registry.is_public,
        max_body_bytes=settings.max_body_bytes,
        docs_public=settings.docs_public,
        metrics_require_key=settings.metrics_require_key,
    )
