"""The webhook configurations' matchConditions (CEL) against the recorded AdmissionReviews, evaluated with the CEL
reference runtime for C++ (cel-expr-python, through tests/cel_eval.py), as `policy export` is.

kube-apiserver evaluates matchConditions with cel-go; the expressions keep to what both implement (field selection,
has(), the exists() macro, `in` on a list, boolean operators), which test_expressions_keep_to_the_common_subset
checks. An expression that fails to evaluate makes kube-apiserver apply the failure policy, so every fixture must
evaluate to a boolean without an error.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests import cel_eval, yamltext
from tests.support import FIXTURES

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATIONS = list(yamltext.load_all((ROOT / "manifests" / "base" / "webhook-configurations.yaml").read_text()))
WEBHOOKS = {hook["name"]: hook for configuration in CONFIGURATIONS for hook in configuration["webhooks"]}
REVIEWS = sorted(p.name for p in FIXTURES.glob("*.json"))


def matches(hook: dict[str, Any], review: dict[str, Any]) -> bool:
    """Whether kube-apiserver would call the webhook for this request, as far as its matchConditions decide."""
    activation = cel_eval.activation(review["request"])
    results = []
    for condition in hook["matchConditions"]:
        result = cel_eval.evaluate(condition["expression"], activation)
        assert isinstance(result, bool), (condition["name"], result)
        results.append(result)
    return all(results)


@functools.cache
def _review_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def review_of(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(_review_text(name))
    return result


def is_sent_to_gate(name: str) -> bool:
    request = review_of(name)["request"]
    return request["resource"]["resource"] == "pods" and request["operation"] == "CREATE"


GATED = {"pod_daemonset_ebs_csi_node.json", "pod_daemonset_dry_run.json", "pod_daemonset_generate_name_only.json",
         "pod_daemonset_already_gated.json", "pod_daemonset_exempted_label.json", "pod_daemonset_opt_out.json"}
NOT_GATED = {"pod_daemonset_host_network.json", "pod_replicaset_owned.json", "pod_bare_generate_name.json"}


def test_the_fixtures_cover_every_pod_case() -> None:
    assert {n for n in REVIEWS if is_sent_to_gate(n)} == GATED | NOT_GATED


@pytest.mark.parametrize("name", sorted(GATED | NOT_GATED))
def test_gate_webhook_is_called_for_daemonset_pods_off_the_host_network_only(name: str) -> None:
    assert matches(WEBHOOKS["gate.startupguard.io"], review_of(name)) is (name in GATED)


CONTROLLED = {"pod_replicaset_owned.json", "replicaset_owned_by_deployment.json"} | {
    n for n in REVIEWS if n.startswith("pod_daemonset_")}


@pytest.mark.parametrize("webhook", ["mutate.startupguard.io", "validate.startupguard.io"])
@pytest.mark.parametrize("name", [n for n in REVIEWS if review_of(n)["request"]["operation"] in ("CREATE", "UPDATE")])
def test_workload_webhooks_skip_pods_replicasets_and_jobs_a_controller_made(webhook: str, name: str) -> None:
    assert matches(WEBHOOKS[webhook], review_of(name)) is (name not in CONTROLLED)


@pytest.mark.parametrize("name", ["job_secrets_store_csi_driver_crds.json", "pod_bare_generate_name.json"])
def test_workload_webhooks_skip_job_and_pod_updates(name: str) -> None:
    update = copy.deepcopy(review_of(name))
    update["request"]["operation"] = "UPDATE"
    update["request"]["oldObject"] = update["request"]["object"]
    assert matches(WEBHOOKS["mutate.startupguard.io"], review_of(name)) is True
    assert matches(WEBHOOKS["mutate.startupguard.io"], update) is False


def test_a_daemonset_update_is_still_sent() -> None:
    assert matches(WEBHOOKS["mutate.startupguard.io"], review_of("daemonset_update.json")) is True


@pytest.mark.parametrize("name, hook", [(c["name"], h["name"]) for h in WEBHOOKS.values()
                                        for c in h.get("matchConditions", [])])
def test_expressions_keep_to_the_common_subset(name: str, hook: str) -> None:
    (expression,) = [c["expression"] for c in WEBHOOKS[hook]["matchConditions"] if c["name"] == name]
    assert set(re.findall(r"(\w+)\s*\(", expression)) <= {"has", "exists"}
    assert not re.search(r"\?|\bmap\(|\bfilter\(|\.\w+\(\)", expression)  # no optionals, no other macros
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)  # a name kube-apiserver accepts
