"""The known-offender catalog: the shipped data, how it recognises an object, and every entry against its chart
rendered with Helm's own engine (tests/fixtures/charts/, expected outcomes in tests/fixtures/expected/charts.yaml)."""

from __future__ import annotations

import importlib.resources
import io
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests import yamltext
from tests.support import FIXTURES
from webhook import catalog, review
from webhook.catalog import CatalogError, image_repository
from webhook.policy import PolicyConfig
from webhook.workloads import Kind

CHARTS = FIXTURES / "charts"
EXPECTED = yamltext.load((FIXTURES / "expected" / "charts.yaml").read_text())
ALL_KINDS = PolicyConfig(kinds=frozenset(Kind))
ROOT = Path(__file__).resolve().parent.parent


def reviewed(name: str) -> list[dict[str, Any]]:
    results = review.review_documents(review.load_documents([str(CHARTS / name)], io.StringIO()), ALL_KINDS)
    return [{"kind": r.kind.value, "name": r.name, "finding": r.finding, "exempt_reason": r.exempt_reason,
             "fix": r.fix["id"] if r.fix else None} for r in results]


def test_every_rendered_chart_has_expected_outcomes() -> None:
    assert sorted(p.name for p in CHARTS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rendered_chart_reviews_as_expected(name: str) -> None:
    assert reviewed(name) == EXPECTED[name]


@pytest.mark.parametrize("offender", catalog.builtin().offenders, ids=lambda o: o.id)
def test_every_entry_is_found_in_its_chart_with_defaults_and_gone_with_its_fix(offender: catalog.Offender) -> None:
    found_in = {name for name, rows in EXPECTED.items() for row in rows if row["fix"] == offender.id}
    assert found_in, "no rendered chart shows this entry"
    for name in found_in:
        fixed = name.replace(".yaml", "").replace("-no-host-network", "").replace("-tolerate-all-taints-false", "")
        fixed = f"{fixed.removesuffix('-operator')}-fixed{'-operator' if name.endswith('-operator.yaml') else ''}.yaml"
        assert not any(row["finding"] for row in EXPECTED[fixed]), fixed


@pytest.mark.parametrize("offender", catalog.builtin().offenders, ids=lambda o: o.id)
def test_every_entry_names_values_a_source_at_a_commit_and_a_short_fix(offender: catalog.Offender) -> None:
    assert offender.values
    assert len(offender.fix) <= catalog.MAX_FIX_LENGTH
    assert offender.source.startswith("https://github.com/")
    commit = offender.source.split("/blob/")[1].split("/")[0]
    assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)


def test_the_catalog_ships_as_package_data() -> None:
    assert importlib.resources.files("webhook").joinpath(catalog.DATA_FILE).is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert catalog.DATA_FILE in package_data["webhook"]


@pytest.mark.parametrize("image, repository", [
    pytest.param("public.ecr.aws/ebs-csi-driver/aws-ebs-csi-driver:v1.64.0", "public.ecr.aws/ebs-csi-driver/"
                 "aws-ebs-csi-driver", id="tag"),
    pytest.param("localhost:5000/cni-plugin", "localhost:5000/cni-plugin", id="registry-port-no-tag"),
    pytest.param("cr.l5d.io/linkerd/cni-plugin@sha256:abc", "cr.l5d.io/linkerd/cni-plugin", id="digest"),
    pytest.param("busybox", "busybox", id="bare"),
])
def test_image_repository_drops_tag_and_digest(image: str, repository: str) -> None:
    assert image_repository(image) == repository


def test_an_image_from_another_registry_is_recognised() -> None:
    pod_spec = {"containers": [{"image": "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/aws-ebs-csi-driver:v1"}]}
    found = catalog.builtin().find(Kind.DAEMONSET, "ebs-csi-node", {}, {}, pod_spec)
    assert found is not None and found.id == "aws-ebs-csi-driver/node"


def test_an_entry_applies_to_its_kinds_only() -> None:
    labels = {"app": "ebs-csi-node"}
    assert catalog.builtin().find(Kind.DEPLOYMENT, "x", labels, {}, {}) is None


def test_a_chart_label_is_matched_without_its_version() -> None:
    found = catalog.builtin().find(Kind.DAEMONSET, "x", {"helm.sh/chart": "aws-node-termination-handler-0.27.6"}, {},
                                   {})
    assert found is not None and found.id == "aws-node-termination-handler"


@pytest.mark.parametrize("text, message", [
    pytest.param("x = 1", "expected [[offender]] tables", id="no-entries"),
    pytest.param('[[offender]]\nid = "a"', "needs exactly", id="missing-keys"),
    pytest.param('[[offender]]\nid = "a"\nchart = "c"\nkinds = ["Nope"]\nvalues = []\nfix = "f"\nsource = "s"\n'
                 'match = [{name = "n"}]', "'Nope' is not a valid Kind", id="bad-kind"),
    pytest.param('[[offender]]\nid = "a"\nchart = "c"\nkinds = ["Pod"]\nvalues = []\nfix = "' + "x" * 101 + '"\n'
                 'source = "s"\nmatch = [{name = "n"}]', "at most 100", id="long-fix"),
    pytest.param('[[offender]]\nid = "a"\nchart = "c"\nkinds = ["Pod"]\nvalues = []\nfix = "f"\nsource = "s"\n'
                 'match = [{colour = "n"}]', "match clause", id="unknown-clause-field"),
])
def test_a_malformed_catalog_is_refused_naming_the_entry(text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=re.escape(message)):
        catalog.parse(text)
