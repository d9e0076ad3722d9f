"""The Kubernetes adapter: thin calls, dicts in and out, no decisions; ApiError.describe() is the one API-error
formatter. kubeclient.py builds the client these calls use; the two are the only modules that import the
`kubernetes` client, and this one imports nothing of the project.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import urllib3
from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

# Objects go in and come out as the API's JSON (plain dicts): responses are read raw (`_preload_content=False`)
# and bodies of group resources go through CustomObjectsApi, which passes dicts through untouched. A round trip
# through the client's models would drop fields we do not own and re-spell MicroTime values (it writes
# `isoformat()`, which the API server rejects when the microseconds are zero).
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
LIST_PAGE_SIZE = 500


class ApiError(Exception):
    """A failed API call: `status` is the HTTP status, 0 when no answer came (connection, timeout)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None,
                 causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status or 'no answer'}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.causes = causes  # details.causes[].reason, such as ResourceVersionTooLarge

    @property
    def version_unavailable(self) -> bool:
        """The server cannot list at the resourceVersion asked for: too old (410) or not yet seen by its watch
        cache (504 "Too large resource version"). client-go's reflector then lists at the current version."""
        return self.status == 410 or (self.status == 504 and (
            "ResourceVersionTooLarge" in self.causes or "too large resource version" in self.message.lower()))

    def describe(self, action: str, *, server: str = "", timeout: float | None = None, rbac: str = "") -> str:
        """The one line a person reads: why `action` (say "list nodes") failed, whatever the server sent.

        `server` names the API server, `timeout` the bound the caller set on the request, and `rbac` says where
        the permissions are granted, for a 403."""
        message = " ".join(self.message.split())
        api = f"the Kubernetes API server {server}" if server else "the Kubernetes API server"
        if self.status == 0:
            if "timed out" in message.lower():
                return f"no answer from {api}" + (f" within {timeout:g} s" if timeout else f": {message}")
            return f"cannot reach {api}: {message}"
        if self.status == 401:
            return f"{api} does not accept the credentials (401): {message}"
        if self.status == 403:
            return f"no permission to {action} (403): {message}" + (f" ({rbac})" if rbac else "")
        return f"cannot {action} ({self.status}): {message}"


class Gone(ApiError):
    """410: the resourceVersion (or list continue token) is too old; list again."""


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API
    version: str
    plural: str
    namespaced: bool


PODS = Resource("", "v1", "pods", namespaced=True)
NODES = Resource("", "v1", "nodes", namespaced=False)
DAEMONSETS = Resource("apps", "v1", "daemonsets", namespaced=True)
DEPLOYMENTS = Resource("apps", "v1", "deployments", namespaced=True)
STATEFULSETS = Resource("apps", "v1", "statefulsets", namespaced=True)
REPLICASETS = Resource("apps", "v1", "replicasets", namespaced=True)
JOBS = Resource("batch", "v1", "jobs", namespaced=True)
CRONJOBS = Resource("batch", "v1", "cronjobs", namespaced=True)
# Where a pod's controlling owner of each kind is read (webhook.unmanaged.RECREATING_KINDS).
OWNER_RESOURCES = {"ReplicaSet": REPLICASETS, "StatefulSet": STATEFULSETS, "DaemonSet": DAEMONSETS, "Job": JOBS}
CILIUM_ENDPOINTS = Resource("cilium.io", "v2", "ciliumendpoints", namespaced=True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", namespaced=True)
EVENTS = Resource("events.k8s.io", "v1", "events", namespaced=True)


@dataclass(frozen=True)
class Target:
    """What to list or watch: a resource, in one namespace or all, optionally narrowed by selectors."""

    resource: Resource
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    resource_version: str
    continue_token: str | None


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict[str, Any]


class Kube:
    """One API client and the typed API groups it serves; kubeclient.connect builds it."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def close(self) -> None:
        self.api_client.close()


def server_url(kube: Kube) -> str:
    """The API server's address, for messages."""
    return str(kube.api_client.configuration.host)


# --- reading -------------------------------------------------------------------------------------------------


def list_page(kube: Kube, target: Target, limit: int = LIST_PAGE_SIZE, continue_token: str | None = None,
              timeout: float | None = None, resource_version: str = "") -> Page:
    options: dict[str, Any] = {"resource_version": resource_version} if resource_version else {}
    if limit:
        options.update(limit=limit, _continue=continue_token)
    response = _call(_list_function(kube, target), **options, **_selectors(target),
                     _request_timeout=_request_timeout(timeout))
    body = _json(response)
    metadata = body.get("metadata") or {}
    return Page(items=list(body.get("items") or []), resource_version=str(metadata.get("resourceVersion", "")),
                continue_token=metadata.get("continue") or None)


def list_all(kube: Kube, target: Target, page_size: int = LIST_PAGE_SIZE, timeout: float | None = None,
             resource_version: str = "") -> tuple[list[dict[str, Any]], str]:
    """Every item, page by page, and the list's resourceVersion to watch from. `timeout` bounds each page's
    request (see _request_timeout).

    With a `resource_version` ("0": any; another: not older than it), one request without a limit, which
    kube-apiserver answers from its watch cache instead of etcd; when it cannot (410, or 504 "Too large resource
    version"), the paginated list at the current version, as client-go's reflector does
    (https://github.com/kubernetes/kubernetes/blob/000c6651b28123ea483df5bf317a4947e0aae352/staging/src/k8s.io/client-go/tools/cache/reflector.go).
    Any other refusal (a 429 while the cache initializes) is raised, for the caller to retry later."""
    if resource_version:
        try:
            page = list_page(kube, target, 0, None, timeout, resource_version)
            return page.items, page.resource_version
        except ApiError as err:
            if not err.version_unavailable:
                raise
            log.info("the API server cannot list from its watch cache; listing from storage", extra={
                "resource": target.resource.plural, "resource_version": resource_version, "status": err.status})
    try:
        return _list_pages(kube, target, page_size, timeout)
    except Gone:
        # A continue token expired mid-way: start over once, like client-go's pager.
        return _list_pages(kube, target, page_size, timeout)


def _list_pages(kube: Kube, target: Target, page_size: int,
                timeout: float | None) -> tuple[list[dict[str, Any]], str]:
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = list_page(kube, target, page_size, token, timeout)
        items += page.items
        token = page.continue_token
        if token is None:
            return items, page.resource_version


def watch(kube: Kube, target: Target, resource_version: str, timeout_seconds: int) -> WatchStream:
    """A watch from `resource_version`; the server ends it after `timeout_seconds`."""
    response = _call(_list_function(kube, target), watch=True, resource_version=resource_version,
                     allow_watch_bookmarks=True, timeout_seconds=timeout_seconds, **_selectors(target),
                     _request_timeout=(CONNECT_TIMEOUT, timeout_seconds + REQUEST_TIMEOUT))
    return WatchStream(response)


class WatchStream:
    """The events of one watch connection. `close()` from another thread unblocks a pending read."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._closed = False

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            for line in iter_resp_lines(self._response):  # type: ignore[no-untyped-call]
                if self._closed:
                    return
                if not line.strip():
                    continue
                event = orjson.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise _status_error(obj)
                yield WatchEvent(type=str(kind), object=obj)
        except ApiError:
            raise
        except Exception as err:
            if self._closed:  # closed on purpose; the read it interrupted fails in assorted ways
                return
            raise ApiError(0, f"watch stream broken: {err!r}") from None
        finally:
            self.close()

    def close(self) -> None:
        # shutdown() unblocks a read in progress in another thread; the connection is not reused.
        self._closed = True
        for step in (self._response.shutdown, self._response.close, self._response.release_conn):
            with contextlib.suppress(Exception):
                step()


def get_pod(kube: Kube, namespace: str, name: str, timeout: float | None = None) -> dict[str, Any] | None:
    return _get_or_none(kube.core.read_namespaced_pod, name, namespace, total=timeout)


def get_cilium_endpoint(kube: Kube, namespace: str, name: str, timeout: float | None = None) -> dict[str, Any] | None:
    return get_object(kube, CILIUM_ENDPOINTS, namespace, name, timeout)


def get_object(kube: Kube, resource: Resource, namespace: str, name: str,
               timeout: float | None = None) -> dict[str, Any] | None:
    """One namespaced object of a group resource (a pod's owner, a CiliumEndpoint); None when not found."""
    r = resource
    return _get_or_none(kube.custom.get_namespaced_custom_object, r.group, r.version, namespace, r.plural, name,
                        total=timeout)


def get_config_map(kube: Kube, namespace: str, name: str, timeout: float | None = None) -> dict[str, Any] | None:
    return _get_or_none(kube.core.read_namespaced_config_map, name, namespace, total=timeout)


def has_resource(kube: Kube, resource: Resource, timeout: float | None = None) -> bool:
    """Whether API discovery lists the resource (an absent group answers 404)."""
    try:
        if resource.group:
            response = _call(kube.custom.get_api_resources, resource.group, resource.version,
                             _request_timeout=_request_timeout(timeout))
        else:
            response = _call(kube.core.get_api_resources, _request_timeout=_request_timeout(timeout))
    except ApiError as err:
        if err.status == 404:
            return False
        raise
    return any(r.get("name") == resource.plural for r in _json(response).get("resources") or [])


def get_lease(kube: Kube, namespace: str, name: str, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any] | None:
    r = LEASES
    return _get_or_none(kube.custom.get_namespaced_custom_object, r.group, r.version, namespace, r.plural, name,
                        timeout=timeout)


# --- writing -------------------------------------------------------------------------------------------------


def patch_pod_status(kube: Kube, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
    """A strategic merge patch on pods/status: merges conditions by type, so the kubelet's stay."""
    return _json(_call(kube.core.patch_namespaced_pod_status, name, namespace, dict(patch),
                       _content_type=STRATEGIC_MERGE_PATCH, _request_timeout=(CONNECT_TIMEOUT, REQUEST_TIMEOUT)))


def evict_pod(kube: Kube, namespace: str, name: str, uid: str, timeout: float | None = None) -> None:
    """POST pods/eviction (policy/v1), so PodDisruptionBudgets apply; the uid precondition spares a
    recreated pod of the same name. Raises ApiError 429 when a budget refuses."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": {"preconditions": {"uid": uid}}}
    _call(kube.core.create_namespaced_pod_eviction, name, namespace, body, _request_timeout=_request_timeout(timeout))


def create_event(kube: Kube, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
    r = EVENTS
    return _json(_call(kube.custom.create_namespaced_custom_object, r.group, r.version, namespace, r.plural,
                       dict(event), _request_timeout=(CONNECT_TIMEOUT, REQUEST_TIMEOUT)))


def create_lease(kube: Kube, namespace: str, lease: Mapping[str, Any],
                 timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    r = LEASES
    return _json(_call(kube.custom.create_namespaced_custom_object, r.group, r.version, namespace, r.plural,
                       dict(lease), _request_timeout=(CONNECT_TIMEOUT, timeout)))


def replace_lease(kube: Kube, namespace: str, name: str, lease: Mapping[str, Any],
                  timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """PUT with the lease's metadata.resourceVersion: 409 when someone else wrote it first."""
    r = LEASES
    return _json(_call(kube.custom.replace_namespaced_custom_object, r.group, r.version, namespace, r.plural,
                       name, dict(lease), _request_timeout=(CONNECT_TIMEOUT, timeout)))


# --- certificates: the Secrets and webhook configurations of `certs --in-cluster` ------------------------------

MUTATING_WEBHOOK_CONFIGURATIONS = Resource("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
                                           namespaced=False)
VALIDATING_WEBHOOK_CONFIGURATIONS = Resource("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
                                             namespaced=False)
# The ObjectMeta fields a client sets; the server keeps the rest on an update (managedFields included).
_CLIENT_METADATA = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "ownerReferences",
                    "finalizers")


def get_secret(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    return _get_or_none(kube.core.read_namespaced_secret, name, namespace)


def create_secret(kube: Kube, namespace: str, secret: Mapping[str, Any]) -> dict[str, Any]:
    """POST; 409 AlreadyExists when another writer created it first."""
    return _json(_call(kube.core.create_namespaced_secret, namespace, _secret_body(secret),
                       _request_timeout=(CONNECT_TIMEOUT, REQUEST_TIMEOUT)))


def replace_secret(kube: Kube, namespace: str, name: str, secret: Mapping[str, Any]) -> dict[str, Any]:
    """PUT with the Secret's metadata.resourceVersion: 409 when someone else wrote it first."""
    return _json(_call(kube.core.replace_namespaced_secret, name, namespace, _secret_body(secret),
                       _request_timeout=(CONNECT_TIMEOUT, REQUEST_TIMEOUT)))


def get_webhook_configuration(kube: Kube, resource: Resource, name: str) -> dict[str, Any] | None:
    r = resource
    return _get_or_none(kube.custom.get_cluster_custom_object, r.group, r.version, r.plural, name)


def patch_webhook_configuration(kube: Kube, resource: Resource, name: str,
                                patch: Mapping[str, Any]) -> dict[str, Any]:
    """A strategic merge patch: `webhooks` merge by name (their patchMergeKey). A metadata.resourceVersion in
    the patch makes it conditional: 409 when the configuration changed since it was read."""
    r = resource
    return _json(_call(kube.custom.patch_cluster_custom_object, r.group, r.version, r.plural, name, dict(patch),
                       _content_type=STRATEGIC_MERGE_PATCH, _request_timeout=(CONNECT_TIMEOUT, REQUEST_TIMEOUT)))


def _secret_body(secret: Mapping[str, Any]) -> dict[str, Any]:
    # CoreV1Api checks a body against its V1Secret model: a field the model does not know fails the call, and
    # times are re-spelled. So send only what a client sets, never the server's fields read back from a GET.
    body = {key: secret[key] for key in ("apiVersion", "kind", "type", "immutable", "data") if key in secret}
    metadata = secret.get("metadata") or {}
    body["metadata"] = {key: metadata[key] for key in _CLIENT_METADATA if key in metadata}
    return body


# --- plumbing ------------------------------------------------------------------------------------------------


def _list_function(kube: Kube, target: Target) -> Any:
    r, ns = target.resource, target.namespace
    if r == PODS:
        return (lambda **kw: kube.core.list_namespaced_pod(ns, **kw)) if ns else kube.core.list_pod_for_all_namespaces
    if r == NODES:
        return kube.core.list_node
    if r.group:
        if ns:
            return lambda **kw: kube.custom.list_namespaced_custom_object(r.group, r.version, ns, r.plural, **kw)
        return lambda **kw: kube.custom.list_cluster_custom_object(r.group, r.version, r.plural, **kw)
    raise ValueError(f"no list call for core resource {r.plural}")


def _request_timeout(timeout: float | None) -> float | tuple[float, float]:
    """The client's `_request_timeout`: by default separate connect and read timeouts; a single number is urllib3's
    total, which bounds connecting and waiting for the answer together."""
    return (CONNECT_TIMEOUT, REQUEST_TIMEOUT) if timeout is None else timeout


def _selectors(target: Target) -> dict[str, str]:
    selectors = {"label_selector": target.label_selector, "field_selector": target.field_selector}
    return {k: v for k, v in selectors.items() if v}


def _get_or_none(function: Any, *args: Any, timeout: float = REQUEST_TIMEOUT,
                 total: float | None = None) -> dict[str, Any] | None:
    """`timeout` bounds the answer after connecting; `total`, when given, connecting and answering together."""
    bound = _request_timeout(total) if total is not None else (CONNECT_TIMEOUT, timeout)
    try:
        return _json(_call(function, *args, _request_timeout=bound))
    except ApiError as err:
        if err.status == 404:
            return None
        raise


def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a client function for its raw response; every failure becomes ApiError."""
    try:
        return function(*args, _preload_content=False, **kwargs)
    except client.ApiException as err:
        raise _api_error(err) from None
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise ApiError(0, str(err)) from None


def _json(response: Any) -> dict[str, Any]:
    try:
        data = response.data if hasattr(response, "data") else response.read()
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as err:
        # The body is read after the call returned: a connection cut mid-answer (a restarting API server) fails here.
        raise ApiError(0, f"answer cut short: {err}") from None
    body = orjson.loads(data) if data else {}
    return body if isinstance(body, dict) else {}


def _api_error(err: Any) -> ApiError:
    status = int(err.status or 0)
    message, retry_after = str(err.reason or ""), None
    causes: tuple[str, ...] = ()
    with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
        body = orjson.loads(err.body or b"")
        if isinstance(body, dict):
            message = str(body.get("message") or message)
            details = body.get("details") or {}
            retry_after = _number(details.get("retryAfterSeconds"))
            causes = tuple(str(c.get("reason") or "") for c in details.get("causes") or [] if isinstance(c, dict))
    headers = err.headers or {}
    header = _number(headers.get("Retry-After")) if hasattr(headers, "get") else None
    retry_after = header if header is not None else retry_after
    return (Gone if status == 410 else ApiError)(status, message, retry_after, causes)


def _status_error(status: Mapping[str, Any]) -> ApiError:
    code = int(status.get("code") or 0)
    message = str(status.get("message") or status.get("reason") or "watch error")
    return (Gone if code == 410 else ApiError)(code, message)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
