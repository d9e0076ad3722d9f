"""Renders the Helm chart with Helm's own engine (helm-python-sdk: Helm's Go library, no helm binary, no cluster).

`helm template` semantics: values are checked against values.schema.json first, then every template renders;
NOTES.txt is not a manifest.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import helm_python

from tests import yamltext
from tests.manifest_render import ROOT

CHART = ROOT / "manifests" / "helm" / "cilium-startup-guard"
RELEASE = "cilium-startup-guard"
NAMESPACE = "cilium-startup-guard"

Object = dict[str, Any]


def render_chart(values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE, chart: Path = CHART,
                 is_upgrade: bool = False) -> list[Object]:
    """The rendered objects, a fresh copy each call (the same rendering is done once per run)."""
    return copy.deepcopy(_render(json.dumps(values or {}, sort_keys=True), namespace, chart, is_upgrade))


@functools.cache
def _render(values: str, namespace: str, chart: Path, is_upgrade: bool) -> list[Object]:
    manifests = _load(chart).render(json.loads(values), name=RELEASE, namespace=namespace,
                                    is_install=not is_upgrade, is_upgrade=is_upgrade)
    objects: list[Object] = []
    for path in sorted(manifests):
        if path.endswith(".yaml"):
            objects += [doc for doc in yamltext.load_all(manifests[path]) if doc]
    return objects


@functools.cache
def _load(chart: Path) -> helm_python.Chart:
    # Loaded charts are immutable; one per run, released when the process ends.
    return helm_python.Chart.load(chart)
