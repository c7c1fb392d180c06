"""What spec.source means for every child and for the status, decided in one place.

A model is either fetched by the operator into a cache claim of its own, or served from a claim
the user already filled (`source.pvc`). The builders and the status ask this plan instead of
branching on the source themselves. Pure: no client, no kopf.
"""

from dataclasses import dataclass

from exo_operator.cache import cache_key, model_path
from exo_operator.model import ExoModel
from exo_operator.naming import cache_claim_name


@dataclass(frozen=True)
class SourcePlan:
    fetched: bool  # downloaded by a fetch Job into the model's own cache claim
    claim_name: str  # the claim the runtime pods mount
    cache_key: str | None  # the cache directory on that claim; None for a user's claim
    model_path: str  # what `exo-runtime serve --model` loads inside the pod


def source_plan(model: ExoModel) -> SourcePlan:
    source = model.spec.source
    if source.pvc:
        return SourcePlan(False, source.pvc.claim_name, None, model_path(source))
    return SourcePlan(True, cache_claim_name(model), cache_key(source), model_path(source))
