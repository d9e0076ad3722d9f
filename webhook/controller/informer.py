"""List-then-watch caches of API objects for the gate controller; no decisions.
Kubernetes calls come in as callables: it imports only kube's error and event types, never the client.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from webhook.backoff import Backoff
from webhook.controller.workqueue import Key
from webhook.kube import ApiError, Gone, WatchEvent

log = logging.getLogger(__name__)

OnChange = Callable[[Key, "dict[str, Any] | None", "dict[str, Any] | None"], None]


class Stream(Protocol):
    def __iter__(self) -> Any: ...
    def close(self) -> None: ...


def object_key(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


# List, then watch from the list's resourceVersion; list again on 410 Gone and every `relist_period`; reconnect
# with backoff on any other error; a resource that is not served (404) is reported, cached as empty, and looked
# for again.
class Informer:
    def __init__(
        self,
        name: str,
        list_objects: Callable[[], tuple[list[dict[str, Any]], str]],
        watch_objects: Callable[[str, int], Stream],
        on_change: OnChange,
        *,
        optional: bool = False,
        on_availability: Callable[[bool], None] | None = None,
        relist_period: float = 900.0,
        watch_timeout: int = 300,
        absent_recheck: float = 30.0,
        backoff: Backoff | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self._list = list_objects
        self._watch = watch_objects
        self._on_change = on_change
        self._optional = optional
        self._on_availability = on_availability
        self._relist_period = relist_period
        self._watch_timeout = watch_timeout
        self._absent_recheck = absent_recheck
        self._backoff = backoff or Backoff(0.5, 30.0)
        # Applied to every object before it is cached or handed on, like client-go's SetTransform: a cache of many
        # objects keeps only the fields its decisions read.
        self._transform = transform or (lambda obj: obj)
        self._cache: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stream: Stream | None = None
        self._available: bool | None = None
        self.synced = threading.Event()
        self.lists = 0  # how many times it listed: tests read it

    # --- the cache, for other threads ---

    def get(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            return self._cache.get(key)

    def cached_keys(self) -> list[Key]:
        with self._lock:
            return list(self._cache)

    @property
    def available(self) -> bool:
        """False while the resource is not served (an optional informer only)."""
        return self._available is not False

    # --- the loop ---

    def run(self, stop: threading.Event) -> None:
        version: str | None = None
        listed_at = 0.0
        while not stop.is_set():
            listing = version is None or time.monotonic() - listed_at >= self._relist_period
            try:
                if listing:
                    items, version = self._list()
                    listed_at = time.monotonic()
                    self.lists += 1
                    self._replace(items)
                    self._set_available(True)
                    self.synced.set()
                    self._backoff.reset()
                version = self._watch_once(version, listed_at, stop)
            except Gone:
                log.info("watch expired; listing again", extra={"informer": self.name})
                version = None
            except ApiError as err:
                if err.status == 404 and self._optional:
                    self._set_available(False)
                    self._replace([])
                    self.synced.set()
                    version = None
                    stop.wait(self._absent_recheck)
                    continue
                log.warning("list or watch failed; retrying", extra={
                    "informer": self.name, "status": err.status, "error": err.message, "listing": listing})
                stop.wait(self._backoff.next())
            except Exception:
                log.exception("informer failed; retrying", extra={"informer": self.name})
                stop.wait(self._backoff.next())

    def stop(self) -> None:
        """Unblock a watch in progress; `run` returns once its stop event is set."""
        stream = self._stream
        if stream is not None:
            stream.close()

    def _watch_once(self, version: str | None, listed_at: float, stop: threading.Event) -> str | None:
        assert version is not None
        # Each watch lasts a random 1-2 times the timeout (as in client-go), and ends by the next re-list.
        relist_in = self._relist_period - (time.monotonic() - listed_at)
        timeout = max(1, int(min(self._watch_timeout * random.uniform(1, 2), relist_in + 1)))
        stream = self._watch(version, timeout)
        self._stream = stream
        started, events = time.monotonic(), 0
        try:
            if stop.is_set():
                return version
            for event in stream:
                events += 1
                version = self._apply(event) or version
                self._backoff.reset()
                if stop.is_set() or time.monotonic() - listed_at >= self._relist_period:
                    break
        finally:
            self._stream = None
            stream.close()
        if events == 0 and time.monotonic() - started < 1.0:
            stop.wait(self._backoff.next())  # a server that ends watches at once must not make us spin
        return version

    def _apply(self, event: WatchEvent) -> str:
        if event.type == "BOOKMARK":
            return resource_version(event.object)
        obj = self._transform(event.object)
        key = object_key(obj)
        with self._lock:
            old = self._cache.get(key)
            if event.type == "DELETED":
                self._cache.pop(key, None)
            else:
                self._cache[key] = obj
        self._on_change(key, old, None if event.type == "DELETED" else obj)
        return resource_version(obj)

    def _replace(self, items: Iterable[dict[str, Any]]) -> None:
        fresh = {object_key(obj): obj for obj in map(self._transform, items)}
        with self._lock:
            old, self._cache = self._cache, fresh
        for key in old.keys() - fresh.keys():
            self._on_change(key, old[key], None)
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None or resource_version(before) != resource_version(obj):
                self._on_change(key, before, obj)

    def _set_available(self, available: bool) -> None:
        if self._available is available:
            return
        self._available = available
        if self._on_availability is not None:
            self._on_availability(available)
