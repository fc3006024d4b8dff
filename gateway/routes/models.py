from __future__ import annotations

from fastapi import APIRouter

from gateway.deps import RegistryDep
from gateway.registry import ModelEntry
from gateway.schemas.models import ModelCard, ModelList
from gateway.settings import is_local_path

router = APIRouter(prefix="/v1", tags=["openai"])


def _cards(entry: ModelEntry, *, details: bool) -> list[ModelCard]:
    served = entry.served
    return [
        ModelCard(
            id=model_id,
            created=entry.created,
            root=None if is_local_path(entry.spec.source) else entry.spec.source,  # no server paths to clients
            max_model_len=served.context_length if served else None,
            status=entry.state.value,
            details=(served.describe() if served else {"error": entry.public_error()}) if details else None,
        )
        for model_id in entry.spec.ids()
    ]


@router.get("/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(data=[card for entry in registry.entries() for card in _cards(entry, details=False)])


@router.get("/models/{model_id:path}", response_model=ModelCard, response_model_exclude_none=True)
async def get_model(model_id: str, registry: RegistryDep) -> ModelCard:
    entry = registry.find(model_id)
    return next(card for card in _cards(entry, details=True) if card.id == model_id)
