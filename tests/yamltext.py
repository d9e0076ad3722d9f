"""YAML for the tests' own reading of rendered manifests and expected outcomes, parsed by libyaml (PyYAML's C parser)
when PyYAML was built with it: the same safe constructors and resolver as yaml.safe_load, about eight times faster
than the pure-Python parser, in which the tests would otherwise spend seconds. The webhook's own parsing (review,
the config file) stays yaml.safe_load: its error messages are what users read, and the tests check them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: str) -> Any:
    return yaml.load(text, Loader=LOADER)


def load_all(text: str) -> Iterator[Any]:
    return yaml.load_all(text, Loader=LOADER)
