"""Strict validation against Kubernetes' OpenAPI schemas as bundled by kubernetes-validate, read once per run.

kubernetes_validate.validate() reads and parses the version's 1.2 MB definitions file on every call; the bundled
files never change while the tests run, so each is parsed once (a tenth of the time for the whole suite).
"""

from __future__ import annotations

import functools
from typing import Any

import kubernetes_validate
from kubernetes_validate import utils

if hasattr(utils, "schema_contents"):
    utils.schema_contents = functools.cache(utils.schema_contents)

OLDEST_SUPPORTED = "1.30"
NEWEST = kubernetes_validate.latest_version()


def validate(obj: dict[str, Any], version: str) -> None:
    """Raises kubernetes_validate.ValidationError (an unknown field included) or SchemaNotFoundError."""
    kubernetes_validate.validate(obj, version, strict=True)
