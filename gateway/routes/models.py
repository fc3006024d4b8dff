from __future__ import annotations

from fastapi import APIRouter

from gateway.deps import RegistryDep
from gateway.redact import public_details
from gateway.registry import ModelEntry, ModelRegistry
from gateway.schemas.models import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["openai"])


def _cards(registry: ModelRegistry, entry: ModelEntry, *, details: bool) -> list[ModelCard]:
    status = registry.describe(entry)
    return [
        ModelCard(
            id=model_id,
            created=entry.created,
            owned_by=getattr(entry.spec, "owned_by", None) or "gantry",  # an upstream entry names its owner
            root=entry.spec.public_root(),
            max_model_len=status["context_length"],
            status=entry.state.value,
            # state, progress, load time, last use, memory estimate, error (and the model's own details once loaded)
            # no server paths for API callers (/admin/models shows them to the operator)
            details=public_details(registry.details(entry)) if details else None,
        )
        for model_id in entry.spec.ids()
    ]


@router.get("/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(
        data=[card for entry in registry.visible_entries() for card in _cards(registry, entry, details=False)]
    )


@router.get("/models/{model_id:path}", response_model=ModelCard, response_model_exclude_none=True)
async def get_model(model_id: str, registry: RegistryDep) -> ModelCard:
    entry = registry.find(model_id)
    return next(card for card in _cards(registry, entry, details=True) if card.id == model_id)
