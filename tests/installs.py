"""Every install the project ships, rendered: the kustomize overlays (one with the optional monitoring components on
top) and the Helm chart with its main choices. The invariant tests run over all of them, so both ways of
installing are held to one set of checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tests.helm_render import render_chart
from tests.manifest_render import build, prepare

Object = dict[str, Any]
Certificates = Literal["cert-manager", "self-managed", "self-managed-job"]

MONITORING_VALUES = {"metrics": {"serviceMonitor": {"enabled": True},
                                 "prometheusRule": {"enabled": True},
                                 "grafanaDashboard": {"enabled": True}}}


@dataclass(frozen=True)
class InstallSpec:
    name: str
    certificates: Certificates
    strict: bool = False
    # ServiceMonitors, PrometheusRule and the Grafana dashboard included.
    monitoring: bool = False
    # A kustomize overlay (with components on top), or the Helm chart with these values.
    overlay: str = ""
    components: tuple[str, ...] = ()
    helm_values: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def helm(self) -> bool:
        return self.helm_values is not None


@dataclass(frozen=True)
class Install:
    spec: InstallSpec
    objects: list[Object] = field(hash=False)


SPECS = (
    InstallSpec("cert-manager", "cert-manager", overlay="cert-manager"),
    InstallSpec("self-managed", "self-managed", overlay="self-managed"),
    InstallSpec("self-managed-job", "self-managed-job", overlay="self-managed-job"),
    InstallSpec("strict", "cert-manager", strict=True, overlay="strict"),
    InstallSpec("self-managed-job+monitoring", "self-managed-job", monitoring=True, overlay="self-managed-job",
                components=("servicemonitor", "alerts", "grafana-dashboard")),
    InstallSpec("helm", "self-managed-job", helm_values={}),
    InstallSpec("helm-cert-manager", "cert-manager", helm_values={"certificates": "cert-manager"}),
    InstallSpec("helm-strict", "cert-manager", strict=True,
                helm_values={"certificates": "cert-manager", "strict": True}),
    InstallSpec("helm-monitoring", "self-managed-job", monitoring=True, helm_values=MONITORING_VALUES),
)
NAMES = tuple(spec.name for spec in SPECS)
BY_NAME = {spec.name: spec for spec in SPECS}


def names(**traits: Any) -> list[str]:
    """The installs whose spec has all these traits, e.g. names(certificates="cert-manager")."""
    return [s.name for s in SPECS if all(getattr(s, k) == v for k, v in traits.items())]


def render_installs(workdir: Path) -> dict[str, Install]:
    manifests = prepare(workdir)
    return {spec.name: Install(spec, render_spec(spec, manifests, workdir)) for spec in SPECS}


def render_spec(spec: InstallSpec, manifests: Path, workdir: Path) -> list[Object]:
    if spec.helm_values is not None:
        return render_chart(spec.helm_values)
    overlay = manifests / "overlays" / spec.overlay
    if not spec.components:
        return build(overlay)
    # A kustomization of the user's own, as the install docs show: the overlay plus components.
    own = workdir / spec.name
    own.mkdir()
    (own / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(overlay)], "components": [str(manifests / "components" / c) for c in spec.components]}))
    return build(own)
