"""ExoModel handlers: reconcile on create, spec update and operator restart."""

from typing import Any

import kopf

from exo_operator.model import GROUP, PLURAL, VERSION


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile_model(namespace: str, name: str, memo: kopf.Memo, retry: int, **_: Any) -> None:
    """Applies the children and status; a transient failure is retried with growing delays."""
    memo.ready.set()
    try:
        await memo.reconciler.reconcile((namespace, name), coalesce=False)
    except kopf.TemporaryError as error:
        # An apiserver in trouble is not helped by hundreds of models retrying every second.
        raise kopf.TemporaryError(str(error), delay=min(60, 2 ** (retry + 1))) from error


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_event(type: str, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Forgets a deleted model; its children go by garbage collection (owner references)."""
    memo.ready.set()
    if type == "DELETED":
        memo.reconciler.forget((namespace, name))
