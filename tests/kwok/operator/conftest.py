"""The cluster tier: the CRD on a real apiserver (kwok control plane), the operator as a process."""

import uuid
from pathlib import Path

import pytest
from operator_harness import CRD, OperatorProcess, kubectl

# kwok's Job pods succeed at once, so a failed fetch must fail the Job on its first pod.
OPERATOR_ENV = {
    "EXO_RUNTIME_IMAGE": "exo-runtime:dev",
    "EXO_FETCH_BACKOFF_LIMIT": "0",
    "EXO_RESYNC_SECONDS": "5",
}


@pytest.fixture(scope="session")
def kubeconfig(kwok_kubeconfig) -> str:
    return str(kwok_kubeconfig)


@pytest.fixture(scope="session")
def crd_installed(kubeconfig) -> None:
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(CRD))
    kubectl(
        kubeconfig, "wait", "--for=condition=Established", "crd/exomodels.exo.dev", "--timeout=30s"
    )


@pytest.fixture(scope="session")
def operator(kubeconfig, crd_installed, tmp_path_factory):
    process = OperatorProcess(kubeconfig, Path(tmp_path_factory.mktemp("operator")), OPERATOR_ENV)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def namespace(kubeconfig, operator, request):
    """A fresh namespace per test; its log of the operator is printed when the test fails."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl(kubeconfig, "create", "namespace", name)
    yield name
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(f"--- operator log ---\n{operator.log_tail()}")
    kubectl(kubeconfig, "delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
