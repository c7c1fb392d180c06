"""exo-operator: serves the LLM an ExoModel names, on GPU (or CPU) pods.

Layout, from pure to effectful:
  model.py, cache.py, naming.py   the spec as typed values; cache keys; child names and labels
  children/                       pure builders: (ExoModel, settings) -> one child's manifest
  plan.py                         which children should exist now, and which need applying
  status.py, runtime_events.py    pure status aggregation from observed children and pod logs
  reconciler.py, kube.py          reads kopf's indexes, applies (server-side apply), writes status
  handlers/                       thin kopf handlers: indexes, model, children, lifecycle
  cli.py, settings.py             `exo-operator run` and its EXO_* settings

Choices worth knowing:
  - No finalizer: children carry an owner reference and garbage collection removes them; the
    cache PVC of a model with storage.retainOnDelete carries none, so it stays. Nothing can be
    left stuck when the operator is gone.
  - The status is derived from what the watches hold, never from memory alone, so a restarted
    operator converges; the cached key in status stops a restart from fetching again.
  - Writes happen only on change: children carry the hash of what was applied, and status is
    compared before it is patched, so an idle cluster sees no writes from the operator.
"""
