"""Prometheus metrics of the webhook, in a registry each app owns (tests create several apps side by side).
prometheus-client and enums only: no FastAPI, no policy.
"""

from __future__ import annotations

import re

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from webhook.enums import CloseReason, Endpoint, ErrorReason, Outcome, Refusal

PREFIX = "cilium_startup_guard"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Reviews take well under a millisecond; the upper buckets catch a stalled event loop.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Anyone who reaches the port can send any namespace string: past this many distinct values (or for a
# string that is no namespace name) the label reads "other", so that memory stays bounded.
MAX_NAMESPACES = 2000
OTHER_NAMESPACE = "other"
_NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


# The admission path calls pre-bound children, so that counting a request costs a lock and an addition, not a
# label lookup.
class Metrics:
    def __init__(self) -> None:
        # No *_created series: they double the exposition and say nothing here (process-wide setting).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, open fds, CPU seconds
        r = self.registry
        requests = Counter(f"{PREFIX}_admission_requests", "Admission requests answered, by endpoint and outcome.",
                           ["endpoint", "outcome"], registry=r)
        errors = Counter(f"{PREFIX}_admission_errors", "Admission requests that ended in an error, by reason.",
                         ["endpoint", "reason"], registry=r)
        latency = Histogram(f"{PREFIX}_admission_duration_seconds",
                            "Time to review one admission request, body already read.",
                            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self._seen = Counter(f"{PREFIX}_blanket_tolerations_seen",
                             "Blanket NoExecute tolerations found on non-exempt DaemonSets, by endpoint and namespace.",
                             ["endpoint", "namespace"], registry=r)
        self._stripped = Counter(f"{PREFIX}_blanket_tolerations_stripped",
                                 "Blanket NoExecute tolerations removed by a /mutate patch, by namespace.",
                                 ["namespace"], registry=r)
        refused = Counter(f"{PREFIX}_http_refused", "Requests refused before review (size or time limits), by reason.",
                          ["reason"], registry=r)
        closed = Counter(f"{PREFIX}_connections_closed",
                         "Connections the server closed by itself outside a request, by reason: over a connection "
                         "cap, TLS handshake too slow or failed, answer not read, too many pipelined requests.",
                         ["reason"], registry=r)
        self.connections_open = Gauge(f"{PREFIX}_connections_open",
                                      "Connections open now, in the TLS handshake or after it.", registry=r)
        config_reloads = Counter(f"{PREFIX}_config_reloads", "Reloads of the configuration file, by result.",
                                 ["result"], registry=r)
        self.config_last_reload_successful = Gauge(
            f"{PREFIX}_config_last_reload_successful",
            "1 when the configuration in force is the file on disk; 0 when the last reload was rejected or "
            "changed server: settings, which need a restart.",
            registry=r)
        cert_reloads = Counter(f"{PREFIX}_certificate_reloads", "Reloads of the serving certificate, by result.",
                               ["result"], registry=r)
        self.certificate_not_after = Gauge(f"{PREFIX}_certificate_not_after_timestamp_seconds",
                                           "Expiry of the serving certificate in use (Unix time).", registry=r)
        self.config_last_reload_successful.set(1)

        self._requests = {(e, o): requests.labels(e.value, o.value) for e in Endpoint for o in Outcome}
        self._errors = {(e, x): errors.labels(e.value, x.value) for e in Endpoint for x in ErrorReason}
        self._latency = {e: latency.labels(e.value) for e in Endpoint}
        self._refused = {x: refused.labels(x.value) for x in Refusal}
        self._closed = {x: closed.labels(x.value) for x in CloseReason}
        self._config_reloads = {ok: config_reloads.labels("success" if ok else "failure") for ok in (True, False)}
        self._cert_reloads = {ok: cert_reloads.labels("success" if ok else "failure") for ok in (True, False)}
        self._namespaces: set[str] = set()
        # Bound on first use, per namespace label (at most MAX_NAMESPACES + 1 of them).
        self._seen_by: dict[tuple[Endpoint, str], Counter] = {}
        self._stripped_by: dict[str, Counter] = {}

    def observe_review(self, endpoint: Endpoint, outcome: Outcome, seconds: float) -> None:
        self._requests[endpoint, outcome].inc()
        self._latency[endpoint].observe(seconds)

    def count_error(self, endpoint: Endpoint, reason: ErrorReason) -> None:
        self._errors[endpoint, reason].inc()

    def count_blanket(self, endpoint: Endpoint, namespace: str, seen: int, stripped: int) -> None:
        label = self._namespace_label(namespace)
        if seen:
            seen_here = self._seen_by.get((endpoint, label))
            if seen_here is None:
                seen_here = self._seen_by[endpoint, label] = self._seen.labels(endpoint.value, label)
            seen_here.inc(seen)
        if stripped:
            stripped_here = self._stripped_by.get(label)
            if stripped_here is None:
                stripped_here = self._stripped_by[label] = self._stripped.labels(label)
            stripped_here.inc(stripped)

    def count_refusal(self, reason: Refusal) -> None:
        self._refused[reason].inc()

    def count_close(self, reason: CloseReason) -> None:
        self._closed[reason].inc()

    def count_config_reload(self, ok: bool, in_force: bool = True) -> None:
        """`in_force`: the whole file took effect; False when server: changes wait for a restart."""
        self._config_reloads[ok].inc()
        self.config_last_reload_successful.set(1 if ok and in_force else 0)

    def count_certificate_reload(self, ok: bool) -> None:
        self._cert_reloads[ok].inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _namespace_label(self, namespace: str) -> str:
        if namespace in self._namespaces:
            return namespace
        if len(self._namespaces) >= MAX_NAMESPACES or not _NAMESPACE_NAME.fullmatch(namespace):
            return OTHER_NAMESPACE
        self._namespaces.add(namespace)
        return namespace
