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
async def ready(registry: RegistryDep) -> JSONResponse:
    """Readiness: 200 once the default model is loaded, 503 before (or if it failed)."""
    models = {entry.spec.name: entry.state.value for entry in registry.entries()}
    default = registry.default
    if default.state is ModelState.READY:
        return JSONResponse({"status": "ready", "models": models})
    if default.state is ModelState.FAILED:
        message = f"The default model `{default.spec.name}` is unavailable. {default.public_error()}"
    else:
        message = f"The default model `{default.spec.name}` is {default.state.value}."
    body = {
        "status": default.state.value,
        "models": models,
        "error": {
            "message": message,
            "type": "service_unavailable",
            "param": None,
            "code": "model_not_ready",
        },
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
