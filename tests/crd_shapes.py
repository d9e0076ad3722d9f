"""Strict shapes of the custom resources the installs render: cert-manager's Certificate and Issuer,
prometheus-operator's ServiceMonitor and PrometheusRule.

No package on the index ships these CRDs' OpenAPI schemas (kubernetes-validate bundles Kubernetes' own types
only), so each shape below is the part of the published CRD schema that this project uses, transcribed with the
same field names, types and enums, and with every other field refused (`additionalProperties: false`): a typo
or a field the CRD does not have fails the test, as kube-apiserver's structural-schema pruning would silently
drop it. The sources, pinned:

- https://github.com/cert-manager/cert-manager/blob/0509c05ab4c8b11acbe28e8c23ca000bfd33676b/deploy/crds/cert-manager.io_certificates.yaml
- https://github.com/cert-manager/cert-manager/blob/d9d55d79167c7ef4b5e9eb6e2e9e8eba88214081/deploy/crds/cert-manager.io_issuers.yaml
- https://github.com/prometheus-operator/prometheus-operator/blob/d42a626beb93f8118d653bdf3e4fa4b194eebcfa/example/prometheus-operator-crd-full/monitoring.coreos.com_servicemonitors.yaml
- https://github.com/prometheus-operator/prometheus-operator/blob/cfd652bef0514a1f0c502d470d81a34f47046b7f/example/prometheus-operator-crd-full/monitoring.coreos.com_prometheusrules.yaml
"""

from __future__ import annotations

from typing import Any

import jsonschema

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
STRINGS: Schema = {"type": "array", "items": STRING}
STRING_MAP: Schema = {"type": "object", "additionalProperties": STRING}


def strict(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


METADATA = strict({"name": STRING, "namespace": STRING, "labels": STRING_MAP, "annotations": STRING_MAP},
                  required=("name", "namespace"))


def resource(api_version: str, kind: str, spec: Schema) -> Schema:
    return strict({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": METADATA,
                   "spec": spec}, required=("apiVersion", "kind", "metadata", "spec"))


ISSUER_REF = strict({"group": STRING, "kind": STRING, "name": STRING}, required=("name",))
KEY_USAGES = ["signing", "digital signature", "content commitment", "key encipherment", "key agreement",
              "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
              "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
              "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]
CERTIFICATE = resource("cert-manager.io/v1", "Certificate", strict({
    "commonName": STRING,
    "dnsNames": STRINGS,
    "duration": STRING,
    "renewBefore": STRING,
    "isCA": {"type": "boolean"},
    "secretName": STRING,
    "issuerRef": ISSUER_REF,
    "privateKey": strict({
        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
        "encoding": {"enum": ["PKCS1", "PKCS8"]},
        "rotationPolicy": {"enum": ["Never", "Always"]},
        "size": {"type": "integer"},
    }),
    "usages": {"type": "array", "items": {"enum": KEY_USAGES}},
}, required=("secretName", "issuerRef")))

ISSUER = resource("cert-manager.io/v1", "Issuer", {
    **strict({
        "selfSigned": strict({"crlDistributionPoints": STRINGS}),
        "ca": strict({"secretName": STRING, "crlDistributionPoints": STRINGS, "ocspServers": STRINGS,
                      "issuingCertificateURLs": STRINGS}, required=("secretName",)),
    }),
    "minProperties": 1, "maxProperties": 1,  # exactly one issuer type
})

LABEL_SELECTOR = strict({
    "matchLabels": STRING_MAP,
    "matchExpressions": {"type": "array", "items": strict(
        {"key": STRING, "operator": STRING, "values": STRINGS}, required=("key", "operator"))},
})
SECRET_KEY = strict({"name": STRING, "key": STRING, "optional": {"type": "boolean"}}, required=("key",))
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                         r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
SERVICE_MONITOR = resource("monitoring.coreos.com/v1", "ServiceMonitor", strict({
    "jobLabel": STRING,
    "selector": LABEL_SELECTOR,
    "namespaceSelector": strict({"any": {"type": "boolean"}, "matchNames": STRINGS}),
    "endpoints": {"type": "array", "items": strict({
        "port": STRING,
        "path": STRING,
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "interval": DURATION,
        "scrapeTimeout": DURATION,
        "honorLabels": {"type": "boolean"},
        "tlsConfig": strict({
            "ca": strict({"secret": SECRET_KEY, "configMap": SECRET_KEY}),
            "serverName": STRING,
            "insecureSkipVerify": {"type": "boolean"},
        }),
    })},
}, required=("selector",)))

PROMETHEUS_RULE = resource("monitoring.coreos.com/v1", "PrometheusRule", strict({
    "groups": {"type": "array", "items": strict({
        "name": {"type": "string", "minLength": 1},
        "interval": DURATION,
        "rules": {"type": "array", "items": strict({
            "alert": STRING,
            "record": STRING,
            # The CRD types expr as int-or-string; this project always writes PromQL text.
            "expr": {"type": "string", "minLength": 1},
            "for": DURATION,
            "keep_firing_for": DURATION,
            "labels": STRING_MAP,
            "annotations": STRING_MAP,
        }, required=("expr",))},
    }, required=("name",))},
}))

SHAPES: dict[tuple[str, str], Schema] = {
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("cert-manager.io/v1", "Issuer"): ISSUER,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}


def is_custom_resource(obj: dict[str, Any]) -> bool:
    return (obj["apiVersion"], obj["kind"]) in SHAPES


def check_shape(obj: dict[str, Any]) -> None:
    """Raises jsonschema.ValidationError when the object does not have its CRD's shape."""
    jsonschema.Draft202012Validator(SHAPES[obj["apiVersion"], obj["kind"]]).validate(obj)
