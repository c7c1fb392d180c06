"""The chart ships the CRDs of crds/ byte for byte (crds/ is the single source of truth)."""

from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_CRDS = REPO_ROOT / "crds"
CHART_CRDS = REPO_ROOT / "charts" / "exo-operator" / "crds"
# kopf's peering CRDs, needed only by the chart's HA mode; not part of the ExoModel API.
CHART_ONLY = {"kopf.dev_peerings.yaml"}


def test_every_crd_is_in_the_chart_unchanged():
    sources = sorted(SOURCE_CRDS.glob("*.yaml"))
    assert sources, f"no CRD in {SOURCE_CRDS}"
    for source in sources:
        copy = CHART_CRDS / source.name
        assert copy.is_file(), f"{copy} is missing: cp {source} {CHART_CRDS}/"
        assert copy.read_bytes() == source.read_bytes(), (
            f"{copy} differs from {source}: cp {source} {CHART_CRDS}/"
        )


def test_the_chart_carries_no_other_crd():
    extra = {p.name for p in CHART_CRDS.glob("*")} - {p.name for p in SOURCE_CRDS.glob("*")}
    assert extra <= CHART_ONLY, f"{sorted(extra - CHART_ONLY)} in {CHART_CRDS} but not in crds/"


def test_peering_crds_are_the_ones_kopf_uses():
    from kopf._cogs.structs import references

    documents = list(yaml.safe_load_all((CHART_CRDS / "kopf.dev_peerings.yaml").read_text()))
    served = {
        (d["spec"]["group"], d["spec"]["names"]["plural"], d["spec"]["scope"]) for d in documents
    }
    assert served == {
        (references.CLUSTER_PEERINGS_K.group, references.CLUSTER_PEERINGS_K.any_name, "Cluster"),
        (
            references.NAMESPACED_PEERINGS_K.group,
            references.NAMESPACED_PEERINGS_K.any_name,
            "Namespaced",
        ),
    }
