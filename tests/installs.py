"""Every install the project ships, rendered: the kustomize overlays (and the optional components on top of
one), keyed by a name the tests print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.manifest_render import prepare, render_overlays

Object = dict[str, Any]


def render_installs(workdir: Path) -> dict[str, list[Object]]:
    return render_overlays(prepare(workdir))
