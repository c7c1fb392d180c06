"""The operator's layering: the pure modules (spec to manifests, observed children to status)
never import kopf, the API client or the thin layer above them, so each is tested on plain
dicts and none can reach the API server."""

import ast
from pathlib import Path

import pytest
from fixtures.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "operator" / "exo_operator"
PURE = [
    "model.py",
    "settings.py",
    "naming.py",
    "cache.py",
    "cache_proof.py",
    "source_plan.py",
    "runtime_events.py",
    "pod_problems.py",
    "members.py",
    "status.py",
    "plan.py",
    *sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "children").glob("*.py")),
]
# kubernetes.utils (quantity parsing) is pure and allowed; `import kubernetes` (which loads the
# client) and the client itself are not.
FORBIDDEN = (
    "kopf",
    "kubernetes",
    "kubernetes.client",
    "kubernetes.config",
    "kubernetes.watch",
    "urllib3",
    "exo_operator.kube",
    "exo_operator.reconciler",
    "exo_operator.handlers",
    "exo_operator.ready_logs",
    "exo_operator.volume_events",
    "exo_operator.metrics",
    "exo_operator.cli",
)


def _within(name: str, forbidden: str) -> bool:
    if forbidden == "kubernetes":
        return name == forbidden
    return name == forbidden or name.startswith(f"{forbidden}.")


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, `from a import b` counted as both `a` and `a.b` (so that
    `from exo_operator import kube` is seen)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_neither_kopf_nor_the_client_nor_the_thin_layer(module: str):
    found = imported_names(PACKAGE / module)
    bad = sorted(n for n in found if any(_within(n, f) for f in FORBIDDEN))
    assert not bad, f"{module} imports {bad}"


def test_a_forbidden_import_is_seen(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text("from exo_operator import kube\nimport kopf\n")
    assert {"exo_operator.kube", "kopf"} <= imported_names(sample)
