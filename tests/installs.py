"""Every install the project ships, rendered: the kustomize overlays (one with the optional monitoring components on
top) and the Helm chart with its main choices. The invariant tests run over all of them, so both ways of
installing are held to one set of checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
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
    # The controller's scope `all` with this action ("" for the default scope): more RBAC, in Cilium's namespace too.
    unmanaged: str = ""

    @property
    def helm(self) -> bool:
        return self.helm_values is not None


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
    InstallSpec("cert-manager+unmanaged-recycle", "cert-manager", overlay="cert-manager",
                components=("unmanaged-recycle",), unmanaged="recycle"),
    InstallSpec("helm-unmanaged-observe", "self-managed-job", unmanaged="observe",
                helm_values={"controller": {"unmanaged": {"scope": "all"}}}),
)
NAMES = tuple(spec.name for spec in SPECS)
BY_NAME = {spec.name: spec for spec in SPECS}


# The installs the fast lane (`pytest -m "not slow"`) checks: one of each way of installing. The rest run with the
# whole suite.
FAST = frozenset({"cert-manager", "helm"})


def names(**traits: Any) -> list[Any]:
    """The installs whose spec has all these traits, e.g. names(certificates="cert-manager"), as pytest params:
    those outside FAST marked slow."""
    return [pytest.param(s.name, marks=() if s.name in FAST else pytest.mark.slow) for s in SPECS
            if all(getattr(s, k) == v for k, v in traits.items())]


class RenderedInstalls(Mapping[str, list[Object]]):
    """Every install's objects by name, each rendered on first use: the fast lane needs only a few."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._manifests: Path | None = None
        self._objects: dict[str, list[Object]] = {}

    def __getitem__(self, name: str) -> list[Object]:
        if name not in self._objects:
            if self._manifests is None:
                self._manifests = prepare(self._workdir)
            self._objects[name] = render_spec(BY_NAME[name], self._manifests, self._workdir)
        return self._objects[name]

    def __iter__(self) -> Iterator[str]:
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)


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
