from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.deps import RegistryDep
from gateway.registry import ModelState

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: 200 while the process is up."""
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(registry: RegistryDep, model: str | None = None) -> JSONResponse:
    """Readiness: 200 once every `preload` model is loaded (models that load on demand do not count);
    503 before, or if one failed. `?model=ID`: 200 only while that model is loaded."""
    models = {entry.spec.name: entry.state.value for entry in registry.visible_entries()}  # no private names
    if model is not None:
        entry = registry.find(model)
        waiting_for = [entry] if entry.state is not ModelState.READY else []
    else:
        waiting_for = [e for e in registry.entries() if e.preload and e.state is not ModelState.READY]
    if not waiting_for:
        return JSONResponse({"status": "ready", "models": models})
    first = waiting_for[0]
    what = f"The {'' if model else 'preloaded '}model `{first.spec.name}`"
    if first.state is ModelState.FAILED:
        message = f"{what} is unavailable. {first.public_error()}"
    else:
        message = f"{what} is {first.state.value}."
    body = {
        "status": first.state.value,
        "models": models,
        "error": {
            "message": message,
            "type": "service_unavailable",
            "param": None,
            "code": "model_not_ready",
        },
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
