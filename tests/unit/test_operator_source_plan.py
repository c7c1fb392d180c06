from _models import model
from exo_operator.cache import cache_key
from exo_operator.source_plan import source_plan


def test_a_downloaded_model_is_fetched_into_its_own_cache_claim():
    m = model()
    plan = source_plan(m)
    key = cache_key(m.spec.source)
    assert plan.fetched
    assert plan.claim_name == "gemma-cache"
    assert plan.cache_key == key
    assert plan.model_path == f"/models/{key}/gemma-3-270m.Q4_K_M.gguf"


def test_a_model_on_an_existing_claim_is_served_from_it_and_never_fetched():
    plan = source_plan(model(source={"pvc": {"claimName": "weights", "path": "a/m.gguf"}}))
    assert not plan.fetched
    assert plan.claim_name == "weights"
    assert plan.cache_key is None
    assert plan.model_path == "/models/a/m.gguf"
