"""The known-offender catalog: recognise a chart or add-on from what its rendered object carries, name the values
that fix it. The data is webhook/offenders.toml, shipped in the package; its header explains the fields.

Stdlib only (tomllib), like policy.py. The file is read on first use, never at import time.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook.workloads import Kind

DATA_FILE = "offenders.toml"
MAX_FIX_LENGTH = 100
# helm.sh/chart is "<name>-<version>" (Helm's own starter, and every chart here); a version starts with a digit,
# optionally after a "v".
_CHART_VERSION = re.compile(r"-v?\d[^-]*(-.*)?$")


class CatalogError(ValueError):
    """The catalog data is not what this module expects; the message names the entry."""


@dataclass(frozen=True)
class Clause:
    chart: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    name: str | None = None
    image: str | None = None

    def holds(self, seen: Seen) -> bool:
        if self.chart is not None and self.chart not in seen.charts:
            return False
        if self.name is not None and self.name != seen.name:
            return False
        for key, value in self.labels:
            if seen.labels.get(key) != value and seen.template_labels.get(key) != value:
                return False
        return self.image is None or any(r == self.image or r.endswith("/" + self.image) for r in seen.repositories)


@dataclass(frozen=True)
class Offender:
    id: str
    chart: str
    kinds: frozenset[Kind]
    values: tuple[str, ...]
    fix: str
    source: str
    match: tuple[Clause, ...]

    def as_json(self) -> dict[str, Any]:
        """The `fix` object of review and audit JSON."""
        return {"id": self.id, "chart": self.chart, "values": list(self.values), "text": self.fix,
                "source": self.source}


@dataclass(frozen=True)
class Seen:
    """What an object carries that the catalog can recognise."""

    name: str
    labels: Mapping[str, Any]
    template_labels: Mapping[str, Any]
    charts: frozenset[str]
    repositories: frozenset[str]


@dataclass(frozen=True)
class Catalog:
    offenders: tuple[Offender, ...] = ()

    def find(self, kind: Kind, name: str, labels: Mapping[str, Any], template_labels: Mapping[str, Any],
             pod_spec: Mapping[str, Any]) -> Offender | None:
        """The first entry for this kind with a clause that holds, None when the object is not a known offender."""
        candidates = [o for o in self.offenders if kind in o.kinds]
        if not candidates:
            return None
        seen = Seen(name=name, labels=labels, template_labels=template_labels,
                    charts=frozenset(_chart_name(v) for v in (labels.get("helm.sh/chart"),
                                                              template_labels.get("helm.sh/chart"))
                                     if isinstance(v, str)),
                    repositories=frozenset(_repositories(pod_spec)))
        return next((o for o in candidates if any(c.holds(seen) for c in o.match)), None)


@functools.cache
def builtin() -> Catalog:
    """The catalog shipped in the package."""
    text = importlib.resources.files("webhook").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return parse(text)


def parse(text: str) -> Catalog:
    document = tomllib.loads(text)
    entries = document.get("offender")
    if not isinstance(entries, list):
        raise CatalogError("expected [[offender]] tables")
    return Catalog(tuple(_offender(entry, i) for i, entry in enumerate(entries)))


def _offender(entry: Any, index: int) -> Offender:
    where = f"offender {entry.get('id', index) if isinstance(entry, dict) else index}"
    if not isinstance(entry, dict) or set(entry) != {"id", "chart", "kinds", "values", "fix", "source", "match"}:
        raise CatalogError(f"{where}: needs exactly id, chart, kinds, values, fix, source and match")
    fix = entry["fix"]
    if not isinstance(fix, str) or not 0 < len(fix) <= MAX_FIX_LENGTH or not fix.isprintable():
        raise CatalogError(f"{where}: fix must be one printable line of at most {MAX_FIX_LENGTH} characters")
    try:
        kinds = frozenset(Kind(k) for k in entry["kinds"])
    except ValueError as err:
        raise CatalogError(f"{where}: {err}") from None
    clauses = tuple(_clause(c, where) for c in entry["match"])
    if not kinds or not clauses:
        raise CatalogError(f"{where}: needs at least one kind and one match clause")
    return Offender(id=str(entry["id"]), chart=str(entry["chart"]), kinds=kinds,
                    values=tuple(str(v) for v in entry["values"]), fix=fix, source=str(entry["source"]),
                    match=clauses)


def _clause(clause: Any, where: str) -> Clause:
    if not isinstance(clause, dict) or not clause or set(clause) - {"chart", "labels", "name", "image"}:
        raise CatalogError(f"{where}: a match clause sets one or more of chart, labels, name, image")
    labels = clause.get("labels", {})
    return Clause(chart=clause.get("chart"), labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
                  name=clause.get("name"), image=clause.get("image"))


def _chart_name(label: str) -> str:
    return _CHART_VERSION.sub("", label)


def _repositories(pod_spec: Mapping[str, Any]) -> Iterable[str]:
    for key in ("containers", "initContainers"):
        boxes = pod_spec.get(key)
        if not isinstance(boxes, list):
            continue
        for box in boxes:
            image = box.get("image") if isinstance(box, dict) else None
            if isinstance(image, str):
                yield image_repository(image)


def image_repository(image: str) -> str:
    """registry/path/name without its tag or digest: a tag follows the last ":" after the last "/"."""
    image = image.partition("@")[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > slash else image
