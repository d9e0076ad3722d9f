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

from webhook import libc
from webhook.backoff import Backoff
from webhook.controller.logthrottle import LogThrottle
from webhook.controller.summaries import shared
from webhook.controller.workqueue import Key
from webhook.kube import ApiError, Gone, WatchEvent

log = logging.getLogger(__name__)

OnChange = Callable[[Key, Any, Any], None]  # key, old and new cached value (None: absent)
Transform = Callable[[dict[str, Any]], Any]
Indexer = Callable[[Any], str]  # a cached value -> its index value ("" when it has none)


class Stream(Protocol):
    def __iter__(self) -> Any: ...
    def close(self) -> None: ...


def object_key(obj: Mapping[str, Any]) -> Key:
    """(namespace, name), as strings of their own (see summaries.shared): a cache key outlives the parsed object."""
    metadata = obj.get("metadata") or {}
    return shared(str(metadata.get("namespace") or "")), shared(str(metadata.get("name") or ""))


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


# List, then watch from the list's resourceVersion; list again on 410 Gone and every `relist_period`; reconnect
# with backoff on any other error; for an informer with `on_availability`, a resource that is not served (404) is
# reported, cached as empty, and looked for again.
#
# `transform` turns each object into what the cache keeps, as it arrives (client-go's SetTransform,
# https://github.com/kubernetes/kubernetes/blob/e8387da7d8546b64aca566ebb1727aaa02a61eca/staging/src/k8s.io/client-go/tools/cache/shared_informer.go);
# a change that leaves the kept value equal calls nobody back. `indexers` name functions of a kept value (say, its
# node) whose keys `by_index` answers without a scan. `list_objects` takes the resourceVersion to list at: "0"
# first (any version, from the API server's watch cache), then the last one seen.
class Informer:
    def __init__(
        self,
        name: str,
        list_objects: Callable[[str], tuple[list[dict[str, Any]], str]],
        watch_objects: Callable[[str, int], Stream],
        on_change: OnChange,
        *,
        on_availability: Callable[[bool], None] | None = None,
        relist_period: float = 900.0,
        watch_timeout: int = 300,
        absent_recheck: float = 30.0,
        backoff: Backoff | None = None,
        transform: Transform | None = None,
        indexers: Mapping[str, Indexer] | None = None,
    ) -> None:
        self.name = name
        self._list = list_objects
        self._transform: Transform = transform or (lambda obj: obj)
        self._indexers = dict(indexers or {})
        # Each index value's keys as a tuple: a node holds a handful of pods, and a tuple of one key is a quarter
        # of the memory of a set of one.
        self._indices: dict[str, dict[str, tuple[Key, ...]]] = {name: {} for name in self._indexers}
        self._log_throttle = LogThrottle()
        self._watch = watch_objects
        self._on_change = on_change
        self._on_availability = on_availability
        self._relist_period = relist_period
        self._watch_timeout = watch_timeout
        self._absent_recheck = absent_recheck
        self._backoff = backoff or Backoff(0.5, 30.0)
        self._cache: dict[Key, Any] = {}
        self._lock = threading.Lock()
        self._stream: Stream | None = None
        self._available: bool | None = None
        self.synced = threading.Event()
        self.lists = 0  # how many times it listed: tests read it

    # --- the cache, for other threads ---

    def get(self, key: Key) -> Any:
        with self._lock:
            return self._cache.get(key)

    def cached_keys(self) -> list[Key]:
        with self._lock:
            return list(self._cache)

    def by_index(self, index: str, value: str) -> list[Key]:
        """The keys whose cached value the indexer `index` maps to `value`."""
        with self._lock:
            return list(self._indices[index].get(value, ()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

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
                    items, version = self._list(version or "0")
                    listed_at = time.monotonic()
                    self.lists += 1
                    self._replace(items)
                    del items  # the parsed objects: only their summaries stay
                    libc.trim_heap()  # the parsed list is freed: hand its pages back, or RSS stays at its peak
                    self._set_available(True)
                    self.synced.set()
                    self._backoff.reset()
                version = self._watch_once(version, listed_at, stop)
            except Gone:
                log.info("watch expired; listing again", extra={"informer": self.name})
                version = None
            except ApiError as err:
                if err.status == 404 and self._on_availability is not None:
                    self._set_available(False)
                    self._replace([])
                    self.synced.set()
                    version = None
                    stop.wait(self._absent_recheck)
                    continue
                left_out = self._log_throttle.allow_failure(err.status, err.status, time.monotonic())
                if left_out is not None:
                    log.warning("list or watch failed; retrying (failures like it are logged once a minute)",
                                extra={"informer": self.name, "status": err.status, "error": err.message,
                                       "listing": listing, "left_out_since_last_line": left_out})
                stop.wait(max(self._backoff.next(), err.retry_after or 0.0))
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
        obj = event.object
        if event.type == "BOOKMARK":
            return resource_version(obj)
        key = object_key(obj)
        new = None if event.type == "DELETED" else self._transform(obj)
        with self._lock:
            old = self._cache.get(key)
            if new is None:
                self._cache.pop(key, None)
            else:
                self._cache[key] = new
            self._reindex(key, old, new)
        if old != new:  # equal kept values: nothing the controller reads has changed
            self._on_change(key, old, new)
        return resource_version(obj)

    def _replace(self, items: Iterable[dict[str, Any]]) -> None:
        fresh = {object_key(obj): self._transform(obj) for obj in items}
        with self._lock:
            old, self._cache = self._cache, fresh
            self._indices = {name: {} for name in self._indexers}
            for key, value in fresh.items():
                self._reindex(key, None, value)
        for key in old.keys() - fresh.keys():
            self._on_change(key, old[key], None)
        for key, value in fresh.items():
            before = old.get(key)
            if before is None or before != value:
                self._on_change(key, before, value)

    def _reindex(self, key: Key, old: Any, new: Any) -> None:
        """Move `key` in each index from its old value's entry to its new value's (the lock is held)."""
        for name, indexer in self._indexers.items():
            index = self._indices[name]
            before, after = (indexer(old) if old is not None else ""), (indexer(new) if new is not None else "")
            if before == after:
                continue
            if before:
                left = tuple(k for k in index.get(before, ()) if k != key)
                if left:
                    index[before] = left
                else:
                    index.pop(before, None)
            if after:
                keys = index.get(after, ())
                if key not in keys:
                    index[after] = (*keys, key)

    def _set_available(self, available: bool) -> None:
        if self._available is available:
            return
        self._available = available
        if self._on_availability is not None:
            self._on_availability(available)
