"""Exponential retry delays with jitter, shared by the controller's informers and `certs --in-cluster`.

A leaf: stdlib only.
"""

from __future__ import annotations

import random


class Backoff:
    """Exponential delays with jitter, so that replicas and informers do not retry in step."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.initial
