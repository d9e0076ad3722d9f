"""`certs`: its flags and run(), in a directory or (--in-cluster) in Secrets. The kubernetes client loads for
--in-cluster only.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from pathlib import Path

from webhook import certs
from webhook.cli.common import PROG, KubeconfigLookup, add_cluster_flags, fail, kubeconfig_of
from webhook.config import DEFAULT_CERTS_DIR
from webhook.errors import ConfigError
from webhook.logs import configure_logging


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "certs", help="make or renew a CA and a serving certificate for the webhook",
        description="Makes a CA and a serving certificate in --out-dir, or renews them: a CA that is still good "
                    "is kept, so the caBundle in the webhook configurations stays valid. Run it again before "
                    "expiry; it changes nothing while the certificates have more than --renew-before days left. "
                    "With --in-cluster the same happens to the Secrets --secret and <secret>-ca through the "
                    "Kubernetes API, and caBundle is set in both webhook configurations. Exit status: 0 done, "
                    "1 an API call failed, 2 bad usage or configuration.")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where the certificate files live (default {DEFAULT_CERTS_DIR})")
    parser.add_argument("--service", default=certs.DEFAULT_SERVICE, help="the webhook Service's name")
    parser.add_argument("--namespace", default=certs.DEFAULT_NAMESPACE, help="the webhook's namespace")
    parser.add_argument("--renew-before", type=int, default=certs.DEFAULT_RENEW_BEFORE.days, metavar="DAYS",
                        help="renew a certificate that expires within DAYS days (default %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="replace the CA and the serving certificate now; the old CA stays in the "
                             "CA bundle until it expires, so the running webhook keeps working")
    parser.add_argument("--kustomize", action="store_true",
                        help="also write a kustomize Component (kustomization.yaml) in --out-dir that makes "
                             "the Secret and sets caBundle in both webhook configurations")
    parser.add_argument("--secret", default=certs.DEFAULT_SECRET,
                        help="the Secret the webhook mounts (default %(default)s); with --in-cluster the CA "
                             "is kept in <secret>-ca")
    parser.add_argument("--webhook-configuration", default=certs.DEFAULT_WEBHOOK_CONFIGURATION,
                        help="name of both webhook configurations (default %(default)s)")
    cluster = parser.add_argument_group("in a cluster", "what the self-managed-job overlay's Job runs")
    cluster.add_argument("--in-cluster", action="store_true",
                         help="keep the certificates in the Secrets, not in files, and set caBundle in every "
                              "webhook of both webhook configurations through the API")
    add_cluster_flags(cluster, KubeconfigLookup.IN_CLUSTER, config=False, cilium=False)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # A renewal window as long as the certificate itself would renew it on every run.
    if not 0 <= args.renew_before < certs.SERVING_VALIDITY.days:
        raise ConfigError(f"--renew-before must be from 0 to {certs.SERVING_VALIDITY.days - 1} days")
    if args.in_cluster:
        if args.out_dir is not None or args.kustomize:
            raise ConfigError("--in-cluster keeps the certificates in Secrets: it takes no --out-dir or --kustomize")
        return _in_cluster(args)
    if args.kubeconfig is not None or args.context is not None:
        raise ConfigError("--kubeconfig and --context go with --in-cluster")
    out: Path = args.out_dir or DEFAULT_CERTS_DIR
    dns_names, ips = certs.default_sans(args.service, args.namespace)
    try:
        renewal = certs.renew(certs.read_stored(out), dns_names, ips,
                              renew_before=datetime.timedelta(days=args.renew_before), force=args.force)
        certs.write_renewal(renewal, out)
        if args.kustomize:
            component = certs.kustomize_component(renewal.ca_bundle_pem, secret=args.secret,
                                                  namespace=args.namespace,
                                                  webhook_configuration=args.webhook_configuration)
            for name, text in component.items():
                (out / name).write_text(text, encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot use certificate directory {out}: {err}") from None
    for note in renewal.notes:
        print(f"note: {note}", file=sys.stderr)
    if renewal.ca_renewed:
        print(f"made a new CA in {out}/{certs.CA_CERT_FILE}", file=sys.stderr)
    if renewal.cert_renewed:
        print(f"wrote {out}/{certs.CERT_FILE} and {certs.KEY_FILE} for {', '.join(dns_names + ips)}, "
              f"valid until {renewal.cert_not_after:%Y-%m-%d}", file=sys.stderr)
    else:
        print(f"{out}/{certs.CERT_FILE} is valid until {renewal.cert_not_after:%Y-%m-%d}; nothing to renew",
              file=sys.stderr)
    trusted = renewal.ca_bundle_pem.count(b"-----BEGIN CERTIFICATE-----")
    print(f"caBundle: {out}/{certs.CA_BUNDLE_FILE} ({trusted} CA{'s' if trusted > 1 else ''})", file=sys.stderr)
    if args.kustomize:
        print(f"wrote {out}/{certs.KUSTOMIZATION_FILE}; apply the overlay that includes it", file=sys.stderr)
    return 0


def _in_cluster(args: argparse.Namespace) -> int:
    from webhook import cluster_certs, kubeclient  # the kubernetes client loads for --in-cluster only

    configure_logging("info")
    # Its retry warnings would only repeat the one error line that a failed call ends with.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    client = kubeclient.connect(kubeconfig_of(args), args.context, user_agent=f"{PROG}-certs")
    options = cluster_certs.Options(
        namespace=args.namespace, service=args.service, secret=args.secret,
        webhook_configuration=args.webhook_configuration, renew_before=datetime.timedelta(days=args.renew_before),
        force=args.force, wait=cluster_certs.CONFIGURATION_WAIT)
    try:
        cluster_certs.run(client, options)
    except cluster_certs.CertsError as err:
        return fail("certs", str(err), 1)
    finally:
        client.close()
    return 0
