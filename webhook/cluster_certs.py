"""`certs --in-cluster`: the CA and serving certificate kept in two Secrets, and caBundle in both webhook
configurations, through webhook.kube (so it loads the kubernetes client: import it lazily). Never logs keys.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from webhook import certs, kube
from webhook.backoff import Backoff

log = logging.getLogger(__name__)

# One `kubectl apply -k` creates the Job and the webhook configurations, so the Job may look before they exist.
CONFIGURATION_WAIT = 120.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0
# Rounds of read, decide, write when another writer got in first (409). The CronJob forbids overlapping runs,
# so that is the install Job meeting a scheduled run, or a person: a few rounds settle it.
ATTEMPTS = 5
CONFIGURATIONS = (("MutatingWebhookConfiguration", kube.MUTATING_WEBHOOK_CONFIGURATIONS),
                  ("ValidatingWebhookConfiguration", kube.VALIDATING_WEBHOOK_CONFIGURATIONS))
CERTS_RBAC = "the certs ServiceAccount needs the RBAC of manifests/overlays/self-managed-job"
LABELS = {"app.kubernetes.io/name": "cilium-startup-guard", "app.kubernetes.io/part-of": "cilium-startup-guard",
          "app.kubernetes.io/managed-by": "cilium-startup-guard-certs"}


class CertsError(Exception):
    """The run failed; the message is one line for the person who ran the command."""


@dataclass(frozen=True)
class Options:
    namespace: str
    service: str
    secret: str  # the serving Secret; the CA lives in <secret>-ca
    webhook_configuration: str  # the name of both configurations
    renew_before: datetime.timedelta = certs.DEFAULT_RENEW_BEFORE
    force: bool = False
    wait: float = CONFIGURATION_WAIT  # seconds to wait for the webhook configurations to exist


class _Conflict(Exception):
    """Someone else wrote first (409): read again and decide again."""


def run(client: kube.Kube, options: Options, now: datetime.datetime | None = None) -> certs.Renewal:
    """Renew what is due in the Secrets, then make every webhook of both configurations trust the CA bundle.

    Order matters for a webhook that is serving: the CA Secret first, so nothing is ever signed by a CA whose
    key was not kept; then, while the serving Secret exists (pods may be serving it), caBundle before the
    certificate that needs it, so kube-apiserver trusts a new certificate before any pod serves it. On a first
    run nothing is served yet, and the serving Secret goes first so that the webhook pods can start while the
    configurations may still be on their way.
    """
    ns, ca_name = options.namespace, options.secret + certs.CA_SECRET_SUFFIX
    dns_names, ips = certs.default_sans(options.service, ns)
    force = options.force
    for _ in range(ATTEMPTS):
        serving = _read_secret(client, ns, options.secret)
        ca = _read_secret(client, ns, ca_name)
        stored = certs.stored_from_secrets(_data(serving), _data(ca))
        renewal = certs.renew(stored, dns_names, ips, renew_before=options.renew_before, now=now, force=force)
        data = certs.secret_data(renewal)
        try:
            if renewal.ca_renewed:
                _write_secret(client, ns, ca_name, ca, data.ca)
                force = False  # done: a round after a conflict must not replace the CA just written
            if serving is not None:
                publish_ca_bundle(client, options.webhook_configuration, renewal.ca_bundle_pem, options.wait)
            if renewal.cert_renewed or renewal.bundle_changed:
                _write_secret(client, ns, options.secret, serving, data.serving)
            if serving is None:
                publish_ca_bundle(client, options.webhook_configuration, renewal.ca_bundle_pem, options.wait)
        except _Conflict as err:
            log.info("another writer got there first; reading again", extra={"fields": {"object": str(err)}})
            continue
        for note in renewal.notes:
            log.warning("certificate store", extra={"fields": {"note": note}})
        log.info("certificates are current", extra={"fields": {
            "namespace": ns, "secret": options.secret, "ca_renewed": renewal.ca_renewed,
            "cert_renewed": renewal.cert_renewed, "ca_bundle_changed": renewal.bundle_changed,
            "cert_not_after": renewal.cert_not_after.isoformat(),
            "trusted_cas": renewal.ca_bundle_pem.count(b"-----BEGIN CERTIFICATE-----")}})
        return renewal
    raise CertsError(f"Secrets {ns}/{options.secret} and {ca_name} kept changing while being renewed; "
                     f"gave up after {ATTEMPTS} attempts")


def publish_ca_bundle(client: kube.Kube, name: str, ca_bundle_pem: bytes, wait: float = CONFIGURATION_WAIT) -> None:
    """Set caBundle in each webhook of both configurations called `name` that does not hold it yet; waits up to
    `wait` seconds for a configuration that does not exist."""
    ca_bundle = base64.b64encode(ca_bundle_pem).decode("ascii")
    deadline = time.monotonic() + wait
    for kind, resource in CONFIGURATIONS:
        for _ in range(ATTEMPTS):
            configuration = _wait_for(client, kind, resource, name, deadline, wait)
            patch = ca_bundle_patch(configuration, ca_bundle)
            if patch is None:
                break
            try:
                with _failing_as(client, f"patch {kind} {name}", passing=(404, 409)):
                    kube.patch_webhook_configuration(client, resource, name, patch)
            except kube.ApiError:  # changed or deleted since it was read: read it again
                log.info("webhook configuration changed; reading again", extra={"fields": {
                    "kind": kind, "configuration": name}})
                continue
            log.info("set caBundle", extra={"fields": {"kind": kind, "configuration": name,
                                                       "webhooks": [h["name"] for h in patch["webhooks"]]}})
            break
        else:
            raise CertsError(f"{kind} {name} kept changing while caBundle was set; gave up after {ATTEMPTS} attempts")


def ca_bundle_patch(configuration: Mapping[str, Any], ca_bundle: str) -> dict[str, Any] | None:
    """A strategic merge patch that sets caBundle (base64) in the webhooks that lack it; None when all hold it.

    `webhooks` merge by name in a strategic merge patch, so the patch names the webhooks it changes and leaves
    the others, their fields and their order alone. A JSON merge patch would replace the whole list; a JSON patch
    would address webhooks by index, and its `test` op fails as 422, like any invalid patch. The resourceVersion
    makes the patch conditional: if the configuration changed after it was read (a webhook renamed or removed),
    kube-apiserver answers 409 instead of merging a caBundle-only webhook back in, and it is read again.
    """
    stale = [hook["name"] for hook in configuration.get("webhooks") or []
             if hook.get("name") and (hook.get("clientConfig") or {}).get("caBundle") != ca_bundle]
    if not stale:
        return None
    return {"metadata": {"resourceVersion": (configuration.get("metadata") or {}).get("resourceVersion")},
            "webhooks": [{"name": name, "clientConfig": {"caBundle": ca_bundle}} for name in stale]}


def _wait_for(client: kube.Kube, kind: str, resource: kube.Resource, name: str, deadline: float,
              wait: float) -> dict[str, Any]:
    backoff = Backoff(FIRST_BACKOFF, MAX_BACKOFF)
    while True:
        with _failing_as(client, f"read {kind} {name}"):
            configuration = kube.get_webhook_configuration(client, resource, name)
        if configuration is not None:
            return configuration
        left = deadline - time.monotonic()
        if left <= 0:
            raise CertsError(f"{kind} {name} does not exist (waited {wait:g}s); apply the manifests that define "
                             f"it, or pass the right --webhook-configuration")
        pause = min(backoff.next(), left)
        log.info("waiting for the webhook configuration", extra={"fields": {
            "kind": kind, "configuration": name, "retry_in": round(pause, 3)}})
        time.sleep(pause)


def _read_secret(client: kube.Kube, namespace: str, name: str) -> dict[str, Any] | None:
    with _failing_as(client, f"read Secret {namespace}/{name}"):
        return kube.get_secret(client, namespace, name)


def _write_secret(client: kube.Kube, namespace: str, name: str, current: Mapping[str, Any] | None,
                  data: dict[str, str]) -> None:
    """Create the Secret, or update the one read (its resourceVersion makes the update conditional), keeping
    any keys and metadata that others put there. Raises _Conflict when the Secret was created, changed or
    deleted since it was read."""
    fields = {"namespace": namespace, "secret": name}
    try:
        if current is None:
            body = {"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "namespace": namespace, "labels": LABELS},
                    "type": certs.TLS_SECRET_TYPE, "data": data}
            with _failing_as(client, f"create Secret {namespace}/{name}", passing=(409,)):
                kube.create_secret(client, namespace, body)
            log.info("created Secret", extra={"fields": fields})
        else:
            body = {**current, "data": {**(current.get("data") or {}), **data}}
            with _failing_as(client, f"update Secret {namespace}/{name}", passing=(404, 409)):
                kube.replace_secret(client, namespace, name, body)
            log.info("updated Secret", extra={"fields": {**fields, "keys": sorted(data)}})
    except kube.ApiError:
        raise _Conflict(f"Secret {namespace}/{name}") from None


@contextlib.contextmanager
def _failing_as(client: kube.Kube, action: str, passing: tuple[int, ...] = ()) -> Iterator[None]:
    """Turn an API failure into a CertsError that says what failed; statuses in `passing` go to the caller."""
    try:
        yield
    except kube.ApiError as err:
        if err.status in passing:
            raise
        server = kube.server_url(client)
        raise CertsError(err.describe(action, server=server, rbac=CERTS_RBAC)) from None


def _data(secret: Mapping[str, Any] | None) -> dict[str, str] | None:
    return None if secret is None else dict(secret.get("data") or {})
