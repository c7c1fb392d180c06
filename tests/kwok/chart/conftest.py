"""Fixtures of the chart tier: the pinned helm, alone (lint, template) or bound to kwok."""

from pathlib import Path

import pytest
from helm_chart import Helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    """helm with no cluster: lint and template."""
    return Helm()


@pytest.fixture(scope="session")
def kwok_helm(kwok_kubeconfig: Path) -> Helm:
    """helm bound to the kwok cluster."""
    return Helm(kwok_kubeconfig)
