"""A small in-memory Kubernetes API server for tests, driven by the real `kubernetes` client over HTTP.

Generic over resource paths: core (/api/v1/...) and group (/apis/GROUP/VERSION/...) resources, namespaced and
cluster-scoped, each registered with `add_resource`. It serves:

- discovery: /api, /api/v1, /apis, /apis/GROUP/VERSION (a removed resource disappears from it and answers 404)
- list with labelSelector, fieldSelector (= == !=, only the fields kube-apiserver lets each resource be
  selected by: 400 for any other), limit and continue; with a resourceVersion ("0", or not older than N) as
  kube-apiserver's watch cache serves it: whole, the limit ignored, or refused (`refuse_cached_lists`: 429, 410
  or 504 "Too large resource version")
- watch: chunked JSON lines of {type, object} from a resourceVersion (or the current state when none is
  given), 410 Gone (as an ERROR event, like kube-apiserver) for a compacted one, timeoutSeconds, and
  `drop_watches()` to cut every open watch connection
- get, create (generateName, 409 AlreadyExists), update (PUT; 409 on a stale resourceVersion or another uid),
  delete (uid/resourceVersion preconditions; pods may be left terminating), deletecollection
- patch: JSON patch, JSON merge patch and a strategic merge patch (lists merged by the usual merge keys), on
  the object or its status subresource; a patch may not change metadata.uid (422, as kube-apiserver)
- pods/eviction with a PodDisruptionBudget switch (`block_evictions`) that answers 429 (+ Retry-After)
- events.k8s.io/v1 Event validation as kube-apiserver does it for that API (422); Secret validation: base64
  data, the keys a kubernetes.io/tls Secret requires, an immutable type (422)
- a resourceVersion inside a patch is a precondition (409 when stale), as kube-apiserver makes it
- a record of every request (`requests`, `calls()`) and fault injection: `fail()`, `throttle()` (429 with
  Retry-After, plain text as kube-apiserver's), `outage()` (a burst of 5xx for some seconds), `compact()` with
  `drop_watches()` (a watch cut: the next watch from an old resourceVersion gets 410), `restart()` (every
  connection cut, the port closed for a while, watch history gone, the objects kept)
- latency: `write_latency` seconds added to every write before it is applied, outside the store's lock, so
  writes overlap as on a real API server whose etcd round trip dominates; reads and watches get none. Every
  connection has TCP_NODELAY (read back into `nodelay`): the stock `http.server` sends headers and body in two
  writes, which with Nagle's algorithm and delayed ACKs would add ~40 ms to each answer
- `rbac_of(request)`: the (apiGroup, resource, verb) that RBAC authorizes a recorded request as

Resource versions come from one counter, as etcd revisions do. Not modelled: authentication and RBAC,
admission, server-side apply, field managers, defaulting, most validation.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonpatch
import orjson


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def name(self) -> str:
        """plural.group, as kubectl and RBAC spell it (just the plural for core resources)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


DEFAULT_RESOURCES = (
    ResourceType("", "v1", "pods", "Pod", True, ("status", "eviction")),
    ResourceType("", "v1", "nodes", "Node", False, ("status",)),
    ResourceType("", "v1", "namespaces", "Namespace", False, ("status",)),
    ResourceType("", "v1", "events", "Event", True),
    ResourceType("", "v1", "configmaps", "ConfigMap", True),
    ResourceType("", "v1", "secrets", "Secret", True),
    ResourceType("", "v1", "services", "Service", True, ("status",)),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True),
    ResourceType("apps", "v1", "daemonsets", "DaemonSet", True, ("status",)),
    ResourceType("apps", "v1", "deployments", "Deployment", True, ("status",)),
    ResourceType("apps", "v1", "statefulsets", "StatefulSet", True, ("status",)),
    ResourceType("apps", "v1", "replicasets", "ReplicaSet", True, ("status",)),
    ResourceType("batch", "v1", "jobs", "Job", True, ("status",)),
    ResourceType("batch", "v1", "cronjobs", "CronJob", True, ("status",)),
    ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("status",)),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
    ResourceType("events.k8s.io", "v1", "events", "Event", True),
    ResourceType("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
                 "MutatingWebhookConfiguration", False),
    ResourceType("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
                 "ValidatingWebhookConfiguration", False),
    ResourceType("cilium.io", "v2", "ciliumendpoints", "CiliumEndpoint", True, ("status",)),
)

WRITES = ("POST", "PUT", "PATCH", "DELETE")

# Strategic merge patch: lists merged by these keys (from the Kubernetes API's patchMergeKey tags);
# every other list is replaced, as for a JSON merge patch.
MERGE_KEYS = {
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "webhooks": "name",  # admissionregistration.k8s.io/v1 webhook configurations
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    user_agent: str
    at: float = field(default_factory=time.monotonic, compare=False)  # when it arrived (monotonic clock)


@dataclass(frozen=True)
class Answer:
    request: Request
    status: int
    at: float  # monotonic clock; for a watch, when its stream began


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int | None  # None: until removed
    when: Callable[[Request], bool] | None = None
    retry_after: int | None = None
    until: float | None = None  # monotonic deadline: the fault ends then, however many times it answered


@dataclass
class _Change:
    rv: int
    resource: ResourceType
    type: str  # ADDED, MODIFIED, DELETED
    old: dict[str, Any] | None
    new: dict[str, Any]


@dataclass
class _EvictionBlock:
    namespace: str
    selector: str | None
    retry_after: int


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = details or {}
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.name} "{name}" not found', {"name": name, "group": rt.group,
                                                                       "kind": rt.plural})


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.name} "{name}": {why}',
                    {"name": name, "group": rt.group, "kind": rt.plural})


def invalid(rt: ResourceType, name: str, causes: list[str]) -> ApiError:
    return ApiError(422, "Invalid", f'{rt.kind} "{name}" is invalid: {"; ".join(causes)}',
                    {"name": name, "group": rt.group, "kind": rt.kind,
                     "causes": [{"message": c} for c in causes]})


class FakeKube:
    def __init__(self, resources: tuple[ResourceType, ...] = DEFAULT_RESOURCES, *, write_latency: float = 0.0,
                 port: int = 0) -> None:
        self._types: dict[tuple[str, str], ResourceType] = {}  # (group, plural)
        for rt in resources:
            self.add_resource(rt)
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self._rv = 100
        self._oldest_rv = 0  # watches from below this answer 410 Gone
        self._history: list[_Change] = []
        self._history_rvs: list[int] = []  # the changes' resourceVersions, for bisecting
        self._cond = threading.Condition(threading.RLock())
        self.requests: list[Request] = []
        self.answers: list[Answer] = []  # each request's status, and when it was answered
        self._faults: list[Fault] = []
        self._evictions_blocked: list[_EvictionBlock] = []
        self._drop_generation = 0
        self._watch_sockets: set[socket.socket] = set()
        self._sockets: set[socket.socket] = set()  # every open client connection, for restart()
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = port
        # Each write (POST, PUT, PATCH, DELETE) waits this long before it is applied, outside the store's lock: the
        # etcd round trip of a real API server, during which other requests, writes included, go on in parallel.
        self.write_latency = write_latency
        # A list with resourceVersion "0" (or another non-empty one) is served as from kube-apiserver's watch cache:
        # whole, its limit ignored. When set, such lists are refused with this status instead (see
        # refuse_cached_lists); lists with resourceVersion "" always go to "etcd", paginated.
        self.cached_list_refusal: int | None = None
        self.cached_lists = 0  # lists answered from the "watch cache"
        self.nodelay: list[int] = []  # TCP_NODELAY as read back from each accepted connection
        # When true, deleting or evicting a running pod leaves it terminating (deletionTimestamp set) until
        # finish_deletion(), as a kubelet honouring terminationGracePeriodSeconds would.
        self.graceful_pod_deletion = False

    # --- lifecycle ---

    def start(self) -> FakeKube:
        self._server = _Server(("127.0.0.1", self._port), _handler_for(self))
        self._port = int(self._server.server_address[1])  # a restart comes back on the same port
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fakekube",
                                        daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None or self._port, "start() first"
        return f"http://127.0.0.1:{self._port}"

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._close_listener()
        self._cut_connections()

    def restart(self, down_for: float = 0.0) -> None:
        """Restart the API server: every connection is cut, nothing listens for `down_for` seconds, and the new
        process's watch cache starts at the current resourceVersion, so a watch from an older one gets 410 Gone
        (kube-apiserver keeps no watch history across a restart). The stored objects survive, as in etcd."""
        self._close_listener()
        self._cut_connections()
        self.compact()
        time.sleep(down_for)
        self.start()

    def _cut_connections(self) -> None:
        with self._cond:
            sockets = list(self._sockets)
            self._drop_generation += 1
            self._cond.notify_all()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def kubeconfig(self, context: str = "fake") -> dict[str, Any]:
        """A kubeconfig document (as a dict) that points the real client here."""
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "fake-token"}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "tester"}}],
        }

    # --- resource types ---

    def add_resource(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.plural)] = rt

    def remove_resource(self, name: str) -> ResourceType:
        """Stop serving a resource (plural.group): discovery omits it and its paths answer 404."""
        rt = self.resource(name)
        del self._types[(rt.group, rt.plural)]
        return rt

    def resource(self, name: str) -> ResourceType:
        plural, _, group = name.partition(".")
        try:
            return self._types[(group, plural)]
        except KeyError:
            raise KeyError(f"resource {name} is not served") from None

    def _type_of(self, obj: dict[str, Any]) -> ResourceType:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group, _, version = api_version.rpartition("/")
        for rt in self._types.values():
            if rt.group == group and rt.version == version and rt.kind == kind:
                return rt
        raise KeyError(f"no resource for {api_version} {kind}")

    # --- direct access for tests (no HTTP, no request record) ---

    def create(self, obj: dict[str, Any], *, share: bool = False) -> dict[str, Any]:
        """Store an object (apiVersion and kind say where); returns a copy with uid and resourceVersion.

        `share`: store it without a deep copy (its metadata is copied), for benchmarks that store thousands of
        objects sharing their unchanging parts; the caller must not change the object afterwards."""
        rt = self._type_of(obj)
        with self._cond:
            stored = self._create(rt, obj.get("metadata", {}).get("namespace", ""), obj, share=share)
            return stored if share else copy.deepcopy(stored)

    def get(self, name: str, namespace: str, object_name: str) -> dict[str, Any] | None:
        rt = self.resource(name)
        with self._cond:
            obj = self._objects.get(_bucket(rt), {}).get((namespace if rt.namespaced else "", object_name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, name: str, namespace: str | None = None) -> list[dict[str, Any]]:
        rt = self.resource(name)
        with self._cond:
            return [copy.deepcopy(o) for (ns, _), o in sorted(self._objects.get(_bucket(rt), {}).items())
                    if namespace is None or ns == namespace]

    def modify(self, name: str, namespace: str, object_name: str,
               change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Change a stored object in place through `change(obj)`; a watch sees MODIFIED."""
        rt = self.resource(name)
        with self._cond:
            old = self._stored(rt, namespace, object_name)
            new = copy.deepcopy(old)
            change(new)
            return copy.deepcopy(self._write(rt, old, new))

    def delete(self, name: str, namespace: str, object_name: str) -> None:
        rt = self.resource(name)
        with self._cond:
            self._remove(rt, self._stored(rt, namespace, object_name))

    def finish_deletion(self, namespace: str, pod_name: str) -> None:
        """The kubelet is done with a terminating pod: remove it."""
        self.delete("pods", namespace, pod_name)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Block until predicate() is truthy (re-checked on every change and every 50 ms); return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met within {timeout}s")
                self._cond.wait(min(left, 0.05))

    # --- switches ---

    def compact(self) -> int:
        """Forget history: a watch from any earlier resourceVersion gets 410 Gone. Returns the oldest kept."""
        with self._cond:
            self._oldest_rv = self._rv
            self._history.clear()
            self._history_rvs.clear()
            return self._oldest_rv

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream, as a restarting API server or a load balancer would."""
        with self._cond:
            self._drop_generation += 1
            sockets = list(self._watch_sockets)
            self._cond.notify_all()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def block_evictions(self, namespace: str, selector: str | None = None, retry_after: int = 0) -> None:
        """A PodDisruptionBudget with no disruptions allowed over pods in `namespace` (matching `selector`)."""
        with self._cond:
            self._evictions_blocked.append(_EvictionBlock(namespace, selector, retry_after))

    def allow_evictions(self) -> None:
        with self._cond:
            self._evictions_blocked.clear()

    def fail(self, method: str, path: str, status: int = 500, times: int | None = 1,
             when: Callable[[Request], bool] | None = None, retry_after: int | None = None,
             seconds: float | None = None) -> Fault:
        """Answer requests matching method (or "*" for any) and path (a regular expression searched in the path)
        with an error, `times` times (None: until `clear_fault`) and at most for `seconds`. A 429 is answered as
        kube-apiserver's max-in-flight and priority-and-fairness filters do: plain text and a Retry-After header
        (https://github.com/kubernetes/kubernetes/blob/04791b4906602ffda5ccf9bc4c84d3329f1d7080/staging/src/k8s.io/apiserver/pkg/server/filters/maxinflight.go)."""
        until = None if seconds is None else time.monotonic() + seconds
        fault = Fault(method.upper(), re.compile(path), status, times, when, retry_after, until)
        with self._cond:
            self._faults.append(fault)
        return fault

    def throttle(self, path: str, retry_after: int, times: int | None = None,
                 when: Callable[[Request], bool] | None = None) -> Fault:
        """429 Too Many Requests with `Retry-After: retry_after` for writes to `path` (PATCH, POST, PUT)."""
        return self.fail("WRITE", path, status=429, times=times, when=when, retry_after=retry_after)

    def outage(self, seconds: float, status: int = 503, path: str = ".") -> Fault:
        """A burst of server errors: every request matching `path` (watches included) answers `status` for
        `seconds`, as an API server whose etcd is unavailable does."""
        return self.fail("*", path, status=status, times=None, seconds=seconds)

    def refuse_cached_lists(self, status: int | None) -> None:
        """Refuse lists that would be served from the watch cache (resourceVersion "0" or another non-empty one):
        429 with Retry-After: 1, as kube-apiserver does while its watch cache initializes (KEP-4568,
        https://github.com/kubernetes/enhancements/tree/master/keps/sig-api-machinery/4568-resilient-watchcache-initialization),
        410 Expired, or 504 "Too large resource version", the two that make client-go's reflector list again with
        resourceVersion "" (https://github.com/kubernetes/kubernetes/blob/000c6651b28123ea483df5bf317a4947e0aae352/staging/src/k8s.io/client-go/tools/cache/reflector.go).
        None serves them again."""
        with self._cond:
            self.cached_list_refusal = status

    def clear_fault(self, fault: Fault) -> None:
        with self._cond:
            if fault in self._faults:
                self._faults.remove(fault)

    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """Recorded requests, optionally by method and a regular expression searched in the path."""
        with self._cond:
            return [r for r in self.requests if (method is None or r.method == method.upper())
                    and (path is None or re.search(path, r.path))]

    # --- storage ---

    def _stored(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = self._objects.get(_bucket(rt), {}).get((namespace if rt.namespaced else "", name))
        if obj is None:
            raise not_found(rt, name)
        return obj

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _create(self, rt: ResourceType, namespace: str, body: dict[str, Any], *, share: bool = False) -> dict[str, Any]:
        if rt.group == "events.k8s.io":
            problems = validate_event_v1(body)
            if problems:
                raise invalid(rt, body.get("metadata", {}).get("name", ""), problems)
        if rt.plural == "secrets" and not rt.group:
            _check_secret(rt, body)
        obj = {**body, "metadata": dict(body.get("metadata") or {})} if share else copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        metadata = obj.setdefault("metadata", {})  # with `share`, the copy made just above
        if rt.namespaced:
            if not namespace:
                raise ApiError(400, "BadRequest", "the namespace of the object is required")
            if metadata.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                                  "namespace sent on the request")
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        if not metadata.get("name"):
            if not metadata.get("generateName"):
                raise invalid(rt, "", ["metadata.name: Required value: name or generateName is required"])
            metadata["name"] = metadata["generateName"] + secrets.token_hex(3)[:5]
        key = (namespace if rt.namespaced else "", metadata["name"])
        bucket = self._objects.setdefault(_bucket(rt), {})
        if key in bucket:
            raise ApiError(409, "AlreadyExists", f'{rt.name} "{metadata["name"]}" already exists',
                           {"name": metadata["name"], "group": rt.group, "kind": rt.plural})
        metadata["uid"] = metadata.get("uid") or str(uuid.uuid4())
        metadata.setdefault("creationTimestamp", _now())
        metadata["resourceVersion"] = self._next_rv()
        bucket[key] = obj
        self._record(rt, "ADDED", None, obj)
        return obj

    def _write(self, rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """Store `new` in place of `old`; a change that changes nothing writes nothing."""
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return old
        new["metadata"]["resourceVersion"] = self._next_rv()
        key = (new["metadata"].get("namespace", "") if rt.namespaced else "", new["metadata"]["name"])
        self._objects[_bucket(rt)][key] = new
        self._record(rt, "MODIFIED", old, new)
        return new

    def _remove(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        key = (obj["metadata"].get("namespace", "") if rt.namespaced else "", obj["metadata"]["name"])
        del self._objects[_bucket(rt)][key]
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._record(rt, "DELETED", obj, gone)
        return gone

    def _record(self, rt: ResourceType, kind: str, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        # Stored objects are never changed in place (every write stores a new dict), so history shares them.
        self._history.append(_Change(self._rv, rt, kind, old, new))
        self._history_rvs.append(self._rv)
        self._cond.notify_all()

    # --- HTTP: routing ---

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any, dict[str, str]]:
        """Answer one request: (status, JSON body or a watch generator, extra headers)."""
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            return 400, ApiError(400, "BadRequest", "request body is not JSON").status(), {}
        request = Request(method, parts.path, query, content_type, parsed, headers.get("User-Agent") or "")
        with self._cond:
            self.requests.append(request)
            fault = self._fault_for(request)
        answer = self._answer(request, fault)
        with self._cond:
            self.answers.append(Answer(request, answer[0], time.monotonic()))
        return answer

    def _answer(self, request: Request, fault: Fault | None) -> tuple[int, Any, dict[str, str]]:
        if fault is not None:
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            if fault.status == 429:
                return 429, b"Too many requests, please try again later.\n", extra
            return fault.status, ApiError(fault.status, "InternalError" if fault.status >= 500 else "Injected",
                                          f"injected fault for {request.method} {request.path}").status(), extra
        if self.write_latency > 0 and request.method in WRITES:
            time.sleep(self.write_latency)
        try:
            return self._route(request)
        except ApiError as err:
            return err.code, err.status(), err.headers

    def _fault_for(self, request: Request) -> Fault | None:
        now = time.monotonic()
        for fault in list(self._faults):
            if fault.until is not None and now >= fault.until:
                self._faults.remove(fault)
                continue
            method_matches = fault.method in ("*", request.method) or (
                fault.method == "WRITE" and request.method in ("POST", "PUT", "PATCH"))
            if method_matches and fault.path.search(request.path) and (
                    fault.when is None or fault.when(request)):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _route(self, r: Request) -> tuple[int, Any, dict[str, str]]:
        segments = [s for s in r.path.split("/") if s]
        if segments in (["api"], ["apis"]) and r.method == "GET":
            return 200, self._discovery_root(segments[0]), {}
        if len(segments) >= 2 and segments[0] == "api":
            group, version, rest = "", segments[1], segments[2:]
        elif len(segments) >= 3 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            if r.method != "GET":
                raise ApiError(405, "MethodNotAllowed", "method not allowed")
            return 200, self._discovery_group(group, version), {}
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3 and (group, rest[2]) in self._types:
            namespace, rest = rest[1], rest[2:]
        rt = self._types.get((group, rest[0]))
        if rt is None or rt.version != version or (namespace and not rt.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if (sub and sub not in rt.subresources) or len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        with self._cond:
            return self._dispatch(rt, namespace, name, sub, r)

    def _dispatch(self, rt: ResourceType, ns: str, name: str, sub: str, r: Request) -> tuple[int, Any, dict[str, str]]:
        if not name:
            if r.method == "GET":
                if r.query.get("watch") in ("true", "1"):
                    return 200, self._watch(rt, ns, r.query), {}
                return 200, self._list(rt, ns, r.query), {}
            if r.method == "POST":
                return 201, self._create(rt, ns, _object_body(r)), {}
            if r.method == "DELETE":
                return 200, self._delete_collection(rt, ns, r.query), {}
        elif sub == "eviction":
            if r.method == "POST":
                return self._evict(rt, ns, name, _object_body(r))
        elif r.method == "GET":
            return 200, self._stored(rt, ns, name), {}
        elif r.method == "PUT":
            return 200, self._update(rt, ns, name, sub, _object_body(r)), {}
        elif r.method == "PATCH":
            return 200, self._patch(rt, ns, name, sub, r), {}
        elif r.method == "DELETE" and not sub:
            return 200, self._delete(rt, ns, name, r.body or {}), {}
        raise ApiError(405, "MethodNotAllowed", f"{r.method} is not supported here")

    # --- discovery ---

    def _discovery_root(self, root: str) -> dict[str, Any]:
        if root == "api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        groups: dict[str, list[str]] = {}
        for rt in self._types.values():
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
             "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
            for g, vs in sorted(groups.items())]}

    def _discovery_group(self, group: str, version: str) -> dict[str, Any]:
        served = [rt for rt in self._types.values() if rt.group == group and rt.version == version]
        if not served:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        resources: list[dict[str, Any]] = []
        for rt in sorted(served, key=lambda t: t.plural):
            resources.append({"name": rt.plural, "singularName": rt.kind.lower(), "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": verbs})
            resources += [{"name": f"{rt.plural}/{s}", "singularName": "", "namespaced": rt.namespaced,
                           "kind": "Eviction" if s == "eviction" else rt.kind,
                           "verbs": ["create"] if s == "eviction" else ["get", "patch", "update"]}
                          for s in rt.subresources]
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    # --- list and watch ---

    def _matching(self, rt: ResourceType, ns: str, query: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), rt)

        def matches(obj: dict[str, Any]) -> bool:
            metadata = obj.get("metadata", {})
            if ns and metadata.get("namespace") != ns:
                return False
            return all(test(metadata.get("labels") or {}) for test in labels) and all(
                test(obj) for test in fields)

        return matches

    def _list(self, rt: ResourceType, ns: str, query: dict[str, str]) -> dict[str, Any]:
        matches = self._matching(rt, ns, query)
        list_rv, start = self._rv, None
        version = query.get("resourceVersion") or ""
        if version and not query.get("continue"):
            return self._list_from_cache(rt, matches, version)
        if query.get("continue"):
            try:
                token = json.loads(base64.b64decode(query["continue"]))
                list_rv, start = int(token["rv"]), tuple(token["start"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "invalid continue token") from None
            if list_rv < self._oldest_rv:
                raise ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                                               "consistent list result. You can start a new list without the "
                                               "continue parameter.")
        keys = sorted(k for k, o in self._objects.get(_bucket(rt), {}).items() if matches(o))
        if start is not None:
            keys = [k for k in keys if k > start]
        limit = int(query.get("limit") or 0)
        page, more = (keys[:limit], len(keys) > limit) if limit > 0 else (keys, False)
        metadata: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if more:
            token = {"rv": list_rv, "start": list(page[-1])}
            metadata["continue"] = base64.b64encode(json.dumps(token).encode()).decode()
            metadata["remainingItemCount"] = len(keys) - len(page)
        bucket = self._objects.get(_bucket(rt), {})
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": metadata,
                "items": [bucket[k] for k in page]}

    def _list_from_cache(self, rt: ResourceType, matches: Callable[[dict[str, Any]], bool],
                         version: str) -> dict[str, Any]:
        """A list with a resourceVersion ("0": any; N: not older than N) as kube-apiserver's watch cache serves
        it: every item at once, the limit ignored ("watch cache is ignoring Limit in that case", client-go's
        reflector.go, cited at refuse_cached_lists)."""
        if self.cached_list_refusal == 429:
            raise ApiError(429, "TooManyRequests", "storage is (re)initializing", {"retryAfterSeconds": 1},
                           {"Retry-After": "1"})
        if self.cached_list_refusal == 410:
            raise ApiError(410, "Expired", f"too old resource version: {version} ({self._oldest_rv})")
        if self.cached_list_refusal == 504 or (version != "0" and _int_or(version, -1) > self._rv):
            raise ApiError(504, "Timeout", f"Too large resource version: {version}, current: {self._rv}",
                           {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                            "retryAfterSeconds": 1})
        self.cached_lists += 1
        bucket = self._objects.get(_bucket(rt), {})
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": {"resourceVersion": str(self._rv)},
                "items": [o for _, o in sorted(bucket.items()) if matches(o)]}

    def _watch(self, rt: ResourceType, ns: str, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Called under the lock: decide the starting point now, stream later (see _stream_watch)."""
        matches = self._matching(rt, ns, query)
        since = query.get("resourceVersion") or ""
        timeout = min(float(query.get("timeoutSeconds") or 1800), 1800.0)
        if since in ("", "0"):
            initial = [{"type": "ADDED", "object": o}
                       for _, o in sorted(self._objects.get(_bucket(rt), {}).items()) if matches(o)]
            position = self._rv
        else:
            position = int(since)
            if position < self._oldest_rv:
                gone = ApiError(410, "Expired", f"too old resource version: {since} ({self._oldest_rv})")
                return iter([{"type": "ERROR", "object": gone.status()}])
            initial = []
        return self._stream_watch(rt, matches, position, initial, time.monotonic() + timeout,
                                  self._drop_generation)

    def _stream_watch(self, rt: ResourceType, matches: Callable[[dict[str, Any]], bool], position: int,
                      initial: list[dict[str, Any]], deadline: float,
                      generation: int) -> Iterator[dict[str, Any]]:
        yield from initial
        while True:
            with self._cond:
                if self._stopping or self._drop_generation != generation:
                    raise ConnectionAbortedError("watch dropped")
                if position < self._oldest_rv:
                    gone = ApiError(410, "Expired", "too old resource version")
                    yield {"type": "ERROR", "object": gone.status()}
                    return
                start = bisect_right(self._history_rvs, position)
                changes = self._history[start:]
                if not changes:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._cond.wait(min(left, 0.2))
                    continue
            for change in changes:
                position = change.rv
                if change.resource != rt:
                    continue
                was = change.old is not None and matches(change.old)
                now = matches(change.new)
                if change.type == "DELETED":
                    kind = "DELETED" if was else None
                elif was and now:
                    kind = "MODIFIED"
                elif now:
                    kind = "ADDED"
                elif was:
                    kind = "DELETED"  # no longer selected: watchers see it go
                else:
                    kind = None
                if kind is not None:
                    yield {"type": kind, "object": change.new}

    # --- writes ---

    def _update(self, rt: ResourceType, ns: str, name: str, sub: str, body: dict[str, Any]) -> dict[str, Any]:
        old = self._stored(rt, ns, name)
        metadata = body.get("metadata") or {}
        if metadata.get("name") not in (None, name):
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if metadata.get("uid") not in (None, "", old["metadata"]["uid"]):
            raise conflict(rt, name, f"Precondition failed: UID in precondition: {metadata['uid']}, "
                                     f"UID in object meta: {old['metadata']['uid']}")
        if metadata.get("resourceVersion") not in (None, "", old["metadata"]["resourceVersion"]):
            raise conflict(rt, name, "the object has been modified; please apply your changes to the latest "
                                     "version and try again")
        new = copy.deepcopy(body)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        if rt.plural == "secrets" and not rt.group:
            _check_secret(rt, new, old)
        for kept in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"):
            if kept in old["metadata"]:
                new.setdefault("metadata", {})[kept] = old["metadata"][kept]
        return self._write(rt, old, self._scope_to(rt, sub, old, new))

    def _patch(self, rt: ResourceType, ns: str, name: str, sub: str, r: Request) -> dict[str, Any]:
        old = self._stored(rt, ns, name)
        patched = copy.deepcopy(old)
        if r.content_type == "application/json-patch+json":
            if not isinstance(r.body, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                patched = jsonpatch.apply_patch(patched, r.body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                raise ApiError(422, "Invalid", str(err)) from None
        elif r.content_type == "application/merge-patch+json":
            patched = merge_patch(patched, _object_body(r))
        elif r.content_type == "application/strategic-merge-patch+json":
            patched = strategic_merge_patch(patched, _object_body(r))
        else:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                                        "accepted media types include: application/json-patch+json, "
                                                        "application/merge-patch+json, "
                                                        "application/strategic-merge-patch+json")
        # kube-apiserver stores the patched object with the resourceVersion it carries, so a patch that sets one
        # is conditional on it (GuaranteedUpdate's optimistic lock), like an update.
        wanted = (patched.get("metadata") or {}).get("resourceVersion")
        if wanted not in (None, "", old["metadata"]["resourceVersion"]):
            raise conflict(rt, name, "the object has been modified; please apply your changes to the latest "
                                     "version and try again")
        if rt.plural == "secrets" and not rt.group:
            _check_secret(rt, patched, old)
        for immutable in ("uid", "name", "namespace"):
            if patched.get("metadata", {}).get(immutable) != old["metadata"].get(immutable):
                raise invalid(rt, name, [f"metadata.{immutable}: Invalid value: "
                                         f"{json.dumps(patched.get('metadata', {}).get(immutable))}: "
                                         f"field is immutable"])
        return self._write(rt, old, self._scope_to(rt, sub, old, patched))

    def _scope_to(self, rt: ResourceType, sub: str, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """The status subresource writes only status; the main resource leaves status alone."""
        if "status" not in rt.subresources:
            return new
        if sub == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        result = new
        if "status" in old:
            result["status"] = copy.deepcopy(old["status"])
        else:
            result.pop("status", None)
        return result

    def _delete(self, rt: ResourceType, ns: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
        obj = self._stored(rt, ns, name)
        pre = options.get("preconditions") or {}
        if pre.get("uid") not in (None, "", obj["metadata"]["uid"]):
            raise conflict(rt, name, f"Precondition failed: UID in precondition: {pre['uid']}, "
                                     f"UID in object meta: {obj['metadata']['uid']}")
        if pre.get("resourceVersion") not in (None, "", obj["metadata"]["resourceVersion"]):
            raise conflict(rt, name, "Precondition failed: ResourceVersion in precondition does not match")
        if rt.plural == "pods" and not rt.group and self.graceful_pod_deletion and _is_running(obj):
            if obj["metadata"].get("deletionTimestamp"):
                return obj

            def terminate(pod: dict[str, Any]) -> dict[str, Any]:
                pod["metadata"]["deletionTimestamp"] = _now()
                pod["metadata"]["deletionGracePeriodSeconds"] = 30
                return pod

            return self._write(rt, obj, terminate(copy.deepcopy(obj)))
        return self._remove(rt, obj)

    def _delete_collection(self, rt: ResourceType, ns: str, query: dict[str, str]) -> dict[str, Any]:
        matches = self._matching(rt, ns, query)
        gone = [self._remove(rt, o) for o in list(self._objects.get(_bucket(rt), {}).values()) if matches(o)]
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self._rv)}, "items": gone}

    def _evict(self, rt: ResourceType, ns: str, name: str, eviction: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if (eviction.get("metadata") or {}).get("name") != name:
            raise ApiError(400, "BadRequest", "name in URL does not match name in Eviction object")
        pod = self._stored(rt, ns, name)
        options = eviction.get("deleteOptions") or {}
        phase = (pod.get("status") or {}).get("phase")
        # kube-apiserver deletes terminal, pending and terminating pods without looking at budgets.
        ignores_budget = phase in ("Succeeded", "Failed", "Pending") or pod["metadata"].get("deletionTimestamp")
        block = None if ignores_budget else self._eviction_block(pod)
        if block is not None:
            details: dict[str, Any] = {"causes": [{"reason": "DisruptionBudget",
                                                   "message": "The disruption budget test-pdb needs 1 healthy pods "
                                                              "and has 1 currently"}]}
            headers = {}
            if block.retry_after:
                details["retryAfterSeconds"] = block.retry_after
                headers["Retry-After"] = str(block.retry_after)
            raise ApiError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption "
                                                   "budget.", details, headers)
        self._delete(rt, ns, name, options)
        return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, {}

    def _eviction_block(self, pod: dict[str, Any]) -> _EvictionBlock | None:
        labels = pod["metadata"].get("labels") or {}
        for block in self._evictions_blocked:
            if block.namespace == pod["metadata"].get("namespace") and all(
                    test(labels) for test in parse_label_selector(block.selector or "")):
                return block
        return None


# --- validation kube-apiserver applies to events.k8s.io/v1 creates (pkg/apis/core/validation/events.go) ---

_QUALIFIED_NAME = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                             r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")


def validate_event_v1(event: dict[str, Any]) -> list[str]:
    problems = []
    if not _MICRO_TIME.fullmatch(str(event.get("eventTime") or "")):
        problems.append("eventTime: Required value (a MicroTime, six fractional digits)")
    if event.get("type") not in ("Normal", "Warning"):
        problems.append(f"type: Invalid value: {event.get('type')!r}")
    controller = str(event.get("reportingController") or "")
    if not controller or not _QUALIFIED_NAME.fullmatch(controller):
        problems.append("reportingController: Invalid value: must be a qualified name")
    if not event.get("reportingInstance") or len(event["reportingInstance"]) > 128:
        problems.append("reportingInstance: Required value (at most 128 characters)")
    for key, limit in (("action", 128), ("reason", 128)):
        if not event.get(key) or len(event[key]) > limit:
            problems.append(f"{key}: Required value (at most {limit} characters)")
    if len(event.get("note") or "") > 1024:
        problems.append("note: Invalid value: at most 1024 characters")
    regarding = event.get("regarding") or {}
    if regarding.get("namespace") and regarding["namespace"] != event.get("metadata", {}).get("namespace"):
        problems.append("regarding.namespace: does not match event.namespace")
    for legacy in ("firstTimestamp", "lastTimestamp", "count", "source"):
        if event.get(legacy):
            problems.append(f"{legacy}: Invalid value: needs to be unset")
    return problems


def _check_secret(rt: ResourceType, secret: dict[str, Any], old: dict[str, Any] | None = None) -> None:
    """What kube-apiserver checks of a Secret (pkg/apis/core/validation ValidateSecret, ValidateSecretUpdate)."""
    name = (secret.get("metadata") or {}).get("name", "")
    data = secret.get("data") or {}
    for key, value in data.items():
        try:
            base64.b64decode(value, validate=True)
        except (TypeError, ValueError):
            # The body does not even decode into a Secret: 400, before validation.
            raise ApiError(400, "BadRequest", f"Secret in version \"v1\" cannot be handled as a Secret: illegal "
                                              f"base64 data in data[{key}]") from None
    problems = []
    kind = secret.get("type") or "Opaque"
    if kind == "kubernetes.io/tls":
        problems += [f"data[{key}]: Required value" for key in ("tls.crt", "tls.key") if key not in data]
    if old is not None and kind != (old.get("type") or "Opaque"):
        problems.append("type: Invalid value: field is immutable")
    if problems:
        raise invalid(rt, name, problems)


# --- authorization ---


def writes(fake: FakeKube) -> list[Request]:
    """The requests that wrote, in order."""
    return [r for r in fake.requests if r.method in WRITES]


def authorization(request: Request) -> tuple[str, str, str, str, str | None]:
    """The (namespace, apiGroup, resource, verb, resourceName) an API server authorizes a request as; a request
    for no resource (discovery) comes back as ("", "nonResourceURL", path, "get", None)."""
    parts = [p for p in request.path.split("/") if p]
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if not rest:
        return "", "nonResourceURL", request.path, "get", None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = "/".join([rest[0], *rest[2:3]])
    name = rest[1] if len(rest) > 1 else None
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection"}.get(request.method)
    if verb is None:
        verb = "get" if name else ("watch" if request.query.get("watch") == "true" else "list")
    return namespace, group, resource, verb, name


def rbac_of(request: Request) -> tuple[str, str, str]:
    """The (apiGroup, resource, verb) an API server authorizes a request as."""
    _, group, resource, verb, _ = authorization(request)
    return group, resource, verb


def is_granted(call: tuple[str, str, str, str, str | None],
               grants: set[tuple[str, str, str, str, str | None]]) -> bool:
    """RBAC's rule: a grant without a resourceName covers every name, one with a name only that name."""
    *scope, name = call
    return any(tuple(g[:4]) == tuple(scope) and g[4] in (None, name) for g in grants)


# --- selectors and patches ---


def parse_label_selector(text: str) -> list[Callable[[dict[str, str]], bool]]:
    """k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b), joined by commas."""
    tests: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(text):
        if m := re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\((.*)\)", term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                tests.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                tests.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif m := re.fullmatch(r"([^\s!=]+)\s*(==|=|!=)\s*(\S*)", term):
            key, op, value = m.groups()
            if op == "!=":
                tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            absent = term[1:].strip()
            tests.append(lambda labels, k=absent: k not in labels)
        else:
            tests.append(lambda labels, k=term: k in labels)
    return tests


def _field(*path: str) -> Callable[[dict[str, Any]], str]:
    def read(obj: dict[str, Any]) -> str:
        node: Any = obj
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return "" if node is None else str(node)

    return read


def _flag(*path: str) -> Callable[[dict[str, Any]], str]:
    # A bool field selects as "true" or "false", an absent one as "false" (strconv.FormatBool of the Go zero value).
    read = _field(*path)
    return lambda obj: "true" if read(obj) == "True" else "false"


def _pod_ip(pod: dict[str, Any]) -> str:
    ips = (pod.get("status") or {}).get("podIPs") or []
    return str(ips[0].get("ip") or "") if ips else _field("status", "podIP")(pod)


# The fields kube-apiserver lets a list or watch select by, besides metadata.name (and metadata.namespace for
# namespaced resources); any other field is refused with 400. Pods: ToSelectableFields in
# https://github.com/kubernetes/kubernetes/blob/v1.31.0/pkg/registry/core/pod/strategy.go, where spec.hostNetwork
# is the formatted bool, "false" when unset. Nodes: NodeToSelectableFields in pkg/registry/core/node/strategy.go;
# Secrets: SelectableFields in pkg/registry/core/secret/strategy.go.
SELECTABLE_FIELDS: dict[tuple[str, str], dict[str, Callable[[dict[str, Any]], str]]] = {
    ("", "pods"): {
        "spec.nodeName": _field("spec", "nodeName"),
        "spec.restartPolicy": _field("spec", "restartPolicy"),
        "spec.schedulerName": _field("spec", "schedulerName"),
        "spec.serviceAccountName": _field("spec", "serviceAccountName"),
        "spec.hostNetwork": _flag("spec", "hostNetwork"),
        "status.phase": _field("status", "phase"),
        "status.podIP": _pod_ip,
        "status.nominatedNodeName": _field("status", "nominatedNodeName"),
    },
    ("", "nodes"): {"spec.unschedulable": _flag("spec", "unschedulable")},
    ("", "secrets"): {"type": _field("type")},
}


def selectable_fields(rt: ResourceType) -> dict[str, Callable[[dict[str, Any]], str]]:
    fields = {"metadata.name": _field("metadata", "name")}
    if rt.namespaced:
        fields["metadata.namespace"] = _field("metadata", "namespace")
    return {**fields, **SELECTABLE_FIELDS.get(_bucket(rt), {})}


def parse_field_selector(text: str, rt: ResourceType) -> list[Callable[[dict[str, Any]], bool]]:
    """field=value, field==value, field!=value, joined by commas (all must hold), over the fields `rt` can be
    selected by."""
    fields = selectable_fields(rt)
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for term in _split_terms(text):
        m = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)", term)
        if m is None:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term}")
        name, op, value = m.groups()
        read = fields.get(name)
        if read is None:
            raise ApiError(400, "BadRequest", f"field label not supported: {name}")
        if op == "!=":
            tests.append(lambda obj, v=value, read=read: read(obj) != v)
        else:
            tests.append(lambda obj, v=value, read=read: read(obj) == v)
    return tests


def _split_terms(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        terms.append(current.strip())
    return terms


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: null deletes, objects merge, everything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, key: str | None = None) -> Any:
    """A strategic merge patch, simplified: lists named in MERGE_KEYS merge item by item on their merge key
    (`$patch: delete` removes one), `$setElementOrder/...` and `$retainKeys` are ignored, the rest is a JSON
    merge patch."""
    if isinstance(patch, list) and key in MERGE_KEYS and isinstance(target, list):
        merge_key = MERGE_KEYS[key]
        result = [copy.deepcopy(item) for item in target]
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                raise ApiError(400, "BadRequest", f"map: {item} does not contain declared merge key: {merge_key}")
            index = next((i for i, old in enumerate(result) if isinstance(old, dict)
                          and old.get(merge_key) == item[merge_key]), None)
            if item.get("$patch") == "delete":
                if index is not None:
                    del result[index]
            elif index is None:
                result.append(copy.deepcopy(item))
            else:
                result[index] = strategic_merge_patch(result[index], item)
        return result
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if name.startswith("$"):
            continue
        if value is None:
            result.pop(name, None)
        else:
            result[name] = strategic_merge_patch(result.get(name), value, name)
    return result


# --- helpers ---


def _int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def _bucket(rt: ResourceType) -> tuple[str, str]:
    return rt.group, rt.plural


def _object_body(r: Request) -> dict[str, Any]:
    if not isinstance(r.body, dict):
        raise ApiError(400, "BadRequest", "the request body must be a JSON object")
    return r.body


def _is_running(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a connection cut by restart() or drop_watches()
            super().handle_error(request, client_address)


def _handler_for(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and chunked watch streams
        disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls

        def setup(self) -> None:
            super().setup()  # sets TCP_NODELAY (StreamRequestHandler, for disable_nagle_algorithm)
            with fake._cond:
                fake._sockets.add(self.connection)
                fake.nodelay.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        def finish(self) -> None:
            with fake._cond:
                fake._sockets.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, answer, headers = fake.handle(self.command, self.path, self.headers, body)
            if isinstance(answer, Iterator):
                self._stream(answer)
                return
            text = isinstance(answer, bytes)  # a plain-text answer, as kube-apiserver's 429 is
            data = answer if text else orjson.dumps(answer)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, events: Iterator[dict[str, Any]]) -> None:
            self.close_connection = True
            sock = self.connection
            with fake._cond:
                fake._watch_sockets.add(sock)
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                for event in events:
                    line = orjson.dumps(event) + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (ConnectionAbortedError, BrokenPipeError, ConnectionResetError, OSError):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # cut mid-stream: the client sees a broken chunked body
            finally:
                with fake._cond:
                    fake._watch_sockets.discard(sock)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
