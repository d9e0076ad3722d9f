"""Renders the Helm chart with Helm's own engine (helm-python-sdk: Helm's Go library, no helm binary, no cluster).

`helm template` semantics: values are checked against values.schema.json first, then every template renders;
NOTES.txt is not a manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import yaml

from tests.manifest_render import ROOT

CHART = ROOT / "manifests" / "helm" / "cilium-startup-guard"
RELEASE = "cilium-startup-guard"
NAMESPACE = "cilium-startup-guard"

Object = dict[str, Any]


def render_chart(values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE, chart: Path = CHART,
                 is_upgrade: bool = False) -> list[Object]:
    with helm_python.Chart.load(chart) as loaded:
        manifests = loaded.render(values or {}, name=RELEASE, namespace=namespace,
                                  is_install=not is_upgrade, is_upgrade=is_upgrade)
    objects: list[Object] = []
    for path in sorted(manifests):
        if path.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(manifests[path]) if doc]
    return objects
