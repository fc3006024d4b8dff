"""/admin: list, load, unload, register and remove models at runtime (Bearer GANTRY_ADMIN_KEY).

Absent (404) when no admin key is configured; 401 with the OpenAI envelope without the right token.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.deps import RegistryDep, SettingsDep
from gateway.errors import AuthenticationError
from gateway.registry import ModelEntry, ModelRegistry
from gateway.specs import AnySpec


async def require_admin(
    request: Request, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    principal = request.scope.get("state", {}).get("principal")  # gateway/access/middleware.py
    if principal is not None and principal.admin:  # the admin key, sent in any of the key headers
        return
    if settings.admin_key is None:
        raise StarletteHTTPException(404, "Not Found")
    expected = f"Bearer {settings.admin_key.get_secret_value()}".encode()
    if not hmac.compare_digest((authorization or "").encode(), expected):  # constant time: no key oracle
        raise AuthenticationError("Missing or wrong admin key: send `Authorization: Bearer <GANTRY_ADMIN_KEY>`.")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


def admin_view(registry: ModelRegistry, entry: ModelEntry) -> dict[str, Any]:
    source = getattr(entry.spec, "source", None)  # local kinds have one; admins may see server paths
    # describe: the lifecycle; an upstream entry adds its replicas' health and counters (kind.describe)
    upstream = registry.details(entry).get("upstream") if entry.kind == "upstream" else None
    extra = {"upstream": upstream} if upstream is not None else {}
    return {"id": entry.name, "aliases": entry.spec.aliases, "source": source, **registry.describe(entry), **extra}


@router.get("/models")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    """Every entry with its state, progress, load time, last use, memory estimate, loads and error."""
    return {"object": "list", "data": [admin_view(registry, entry) for entry in registry.entries()]}


@router.post("/models", status_code=201)
async def add_model(spec: AnySpec, registry: RegistryDep) -> dict[str, Any]:
    """Register a model with the models file's fields; kept across restarts in the state file. 409 if taken."""
    return admin_view(registry, await registry.add(spec))


@router.post("/models/{model_id:path}/load")
async def load_model(model_id: str, registry: RegistryDep) -> dict[str, Any]:
    """Load now (retries a failed model); answers when it is ready, or 503 with the load's error."""
    return admin_view(registry, await registry.load(model_id))


@router.post("/models/{model_id:path}/unload")
async def unload_model(model_id: str, registry: RegistryDep, force: bool = False) -> dict[str, Any]:
    """Unload (the next request loads it again). Running requests get 30 s to finish; `force` aborts them."""
    return admin_view(registry, await registry.unload(model_id, **({"drain": 0.0} if force else {})))


@router.delete("/models/{model_id:path}")
async def remove_model(model_id: str, registry: RegistryDep, force: bool = False) -> dict[str, Any]:
    """Unload and forget the model (also after a restart)."""
    entry = await registry.remove(model_id, **({"drain": 0.0} if force else {}))
    return {"id": entry.name, "object": "model", "deleted": True}
