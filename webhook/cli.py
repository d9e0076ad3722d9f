"""Command line: `cilium-startup-guard` and `python -m webhook`. Builds Settings and hands them down."""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import logging
import signal
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import yaml

from webhook import certs
from webhook.config import (
    DEFAULT_AGENT_SELECTOR,
    DEFAULT_AUDIT_TIMEOUT,
    DEFAULT_CERTS_DIR,
    DEFAULT_CILIUM_NAMESPACE,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_LEASE_NAME,
    DEFAULT_METRICS_PORT,
    DEFAULT_PORT,
    DEFAULT_RECYCLE_RATE,
    DEFAULT_RELEASE_AFTER,
    ConfigError,
    ConfigFile,
    ServerSettings,
    build_settings,
    load_config,
)
from webhook.logs import configure_logging
from webhook.policy import Mode

PROG = "cilium-startup-guard"
EXIT_USAGE = 2
# `serve` flags that are ServerSettings fields of the same name.
SERVER_FLAGS = ("max_body_bytes", "max_header_bytes", "max_connections_per_source", "max_connections",
                "tls_handshake_timeout", "header_timeout", "body_timeout", "write_timeout", "keep_alive_timeout",
                "shutdown_delay", "shutdown_timeout", "reload_interval")

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=(
        "Keeps DaemonSet pods from starting before Cilium manages their network."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the admission webhook over HTTPS")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=None,
                       help=f"port to listen on, 1-65535, or 0 for any free one (default {DEFAULT_PORT})")
    serve.add_argument("--tls-cert", type=Path, help="serving certificate (PEM); with --tls-key")
    serve.add_argument("--tls-key", type=Path, help="private key of the serving certificate (PEM)")
    serve.add_argument("--certs-dir", type=Path, default=None,
                       help=f"where development certificates are made when no --tls-cert is given "
                            f"(default {DEFAULT_CERTS_DIR})")
    _add_policy_flags(serve)
    limits = serve.add_argument_group("limits and timings", "each overrides the config file's server: section")
    limits.add_argument("--max-body-bytes", type=int, metavar="N",
                        help=f"refuse larger request bodies with 413 (default {ServerSettings.max_body_bytes})")
    limits.add_argument("--max-header-bytes", type=int, metavar="N",
                        help=f"refuse larger request heads with 431 (default {ServerSettings.max_header_bytes})")
    limits.add_argument("--max-connections-per-source", type=int, metavar="N",
                        help="connections open at once from one address (an IPv6 /64); more are reset at once "
                             f"(default {ServerSettings.max_connections_per_source})")
    limits.add_argument("--max-connections", type=int, metavar="N",
                        help=f"connections open at once in all (default {ServerSettings.max_connections})")
    limits.add_argument("--tls-handshake-timeout", type=float, metavar="S",
                        help="seconds from accepting a connection to the end of its TLS handshake "
                             f"(default {ServerSettings.tls_handshake_timeout:g})")
    limits.add_argument("--header-timeout", type=float, metavar="S",
                        help=f"seconds for a request's headers to arrive (default {ServerSettings.header_timeout:g})")
    limits.add_argument("--body-timeout", type=float, metavar="S",
                        help=f"seconds for a request's body to arrive (default {ServerSettings.body_timeout:g})")
    limits.add_argument("--write-timeout", type=float, metavar="S",
                        help="seconds a client may leave an answer unread before it is cut off "
                             f"(default {ServerSettings.write_timeout:g})")
    limits.add_argument("--keep-alive-timeout", type=int, metavar="S",
                        help=f"seconds an idle connection stays open (default {ServerSettings.keep_alive_timeout})")
    limits.add_argument("--shutdown-delay", type=float, metavar="S",
                        help="on SIGTERM, seconds to keep serving with /readyz at 503 "
                             f"(default {ServerSettings.shutdown_delay:g})")
    limits.add_argument("--shutdown-timeout", type=float, metavar="S",
                        help="seconds to wait for requests in flight after the listener closes "
                             f"(default {ServerSettings.shutdown_timeout:g})")
    limits.add_argument("--reload-interval", type=float, metavar="S",
                        help="seconds between checks of the certificate and config files for changes "
                             f"(default {ServerSettings.reload_interval:g})")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)

    review = commands.add_parser("review", help="run the policy offline on manifests or AdmissionReviews",
                                 description="Exit status: 0 clean, 1 a non-exempt DaemonSet has a blanket "
                                             "NoExecute toleration, 2 unreadable input or configuration.")
    review.add_argument("paths", nargs="+", metavar="FILE|DIR|-",
                        help="YAML or JSON files (multi-document), directories of them, or - for stdin")
    review.add_argument("--output", choices=["table", "json"], default="table")
    review.add_argument("--fix", action="store_true",
                        help="print the manifests as /mutate would leave them (strip mode unless --mode)")
    _add_policy_flags(review)
    review.set_defaults(run=_review)

    certs_cmd = commands.add_parser(
        "certs", help="make or renew a CA and a serving certificate for the webhook",
        description="Makes a CA and a serving certificate in --out-dir, or renews them: a CA that is still good "
                    "is kept, so the caBundle in the webhook configurations stays valid. Run it again before "
                    "expiry; it changes nothing while the certificates have more than --renew-before days left. "
                    "With --in-cluster the same happens to the Secrets --secret and <secret>-ca through the "
                    "Kubernetes API, and caBundle is set in both webhook configurations. Exit status: 0 done, "
                    "1 an API call failed, 2 bad usage or configuration.")
    certs_cmd.add_argument("--out-dir", type=Path, default=None,
                           help=f"where the certificate files live (default {DEFAULT_CERTS_DIR})")
    certs_cmd.add_argument("--service", default=certs.DEFAULT_SERVICE, help="the webhook Service's name")
    certs_cmd.add_argument("--namespace", default=certs.DEFAULT_NAMESPACE, help="the webhook's namespace")
    certs_cmd.add_argument("--renew-before", type=int, default=certs.DEFAULT_RENEW_BEFORE.days, metavar="DAYS",
                           help="renew a certificate that expires within DAYS days (default %(default)s)")
    certs_cmd.add_argument("--force", action="store_true",
                           help="replace the CA and the serving certificate now; the old CA stays in the "
                                "CA bundle until it expires, so the running webhook keeps working")
    certs_cmd.add_argument("--kustomize", action="store_true",
                           help="also write a kustomize Component (kustomization.yaml) in --out-dir that makes "
                                "the Secret and sets caBundle in both webhook configurations")
    certs_cmd.add_argument("--secret", default=certs.DEFAULT_SECRET,
                           help="the Secret the webhook mounts (default %(default)s); with --in-cluster the CA "
                                "is kept in <secret>-ca")
    certs_cmd.add_argument("--webhook-configuration", default=certs.DEFAULT_WEBHOOK_CONFIGURATION,
                           help="name of both webhook configurations (default %(default)s)")
    cluster = certs_cmd.add_argument_group("in a cluster", "what the self-managed-job overlay's Job runs")
    cluster.add_argument("--in-cluster", action="store_true",
                         help="keep the certificates in the Secrets, not in files, and set caBundle in every "
                              "webhook of both webhook configurations through the API")
    cluster.add_argument("--kubeconfig", type=Path, metavar="PATH",
                         help="kubeconfig file (default: the in-cluster service account)")
    cluster.add_argument("--context", metavar="NAME", help="kubeconfig context (default: its current context)")
    certs_cmd.set_defaults(run=_certs)

    _add_controller(commands)
    _add_audit(commands)
    return parser


def _add_controller(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = commands.add_parser(
        "controller", help="run the gate controller: set the readiness gate once Cilium manages a pod",
        description="Sets the readiness gate of gated pods once their CiliumEndpoint is ready, and evicts pods "
                    "that Cilium will never manage. Exit status: 0 after SIGTERM (or --release-all done), 1 when "
                    "the leader lease could not be renewed (or --release-all left pods), 2 bad usage.")
    ctl.add_argument("--kubeconfig", type=Path, metavar="PATH",
                     help="kubeconfig file (default: the in-cluster service account)")
    ctl.add_argument("--context", metavar="NAME", help="kubeconfig context (default: its current context)")
    ctl.add_argument("--config", type=Path, metavar="FILE",
                     help="the webhook's configuration file (YAML): gate condition type, pod label, lease timings")
    ctl.add_argument("--grace-period", type=_non_negative, default=DEFAULT_GRACE_PERIOD, metavar="SECONDS",
                     help=f"how long a running pod may lack a CiliumEndpoint after the later of its start and its "
                          f"node's Cilium agent becoming ready, before it is evicted (default "
                          f"{DEFAULT_GRACE_PERIOD:g})")
    ctl.add_argument("--recycle-rate", type=_non_negative, default=DEFAULT_RECYCLE_RATE, metavar="PER_MINUTE",
                     help=f"evictions a minute, cluster-wide, also the burst; 0 never evicts "
                          f"(default {DEFAULT_RECYCLE_RATE:g})")
    ctl.add_argument("--release-after", type=_non_negative, default=DEFAULT_RELEASE_AFTER, metavar="SECONDS",
                     help=f"release a gate still closed this long after its pod started, with a Warning event; "
                          f"0 never (default {DEFAULT_RELEASE_AFTER:g})")
    ctl.add_argument("--metrics-port", type=_port, default=DEFAULT_METRICS_PORT, metavar="PORT",
                     help=f"plain HTTP port for /metrics, /healthz and /readyz (default {DEFAULT_METRICS_PORT})")
    ctl.add_argument("--lease-namespace", metavar="NS",
                     help="namespace of the leader Lease (default: the controller's own namespace in a cluster, "
                          "else default)")
    ctl.add_argument("--lease-name", default=DEFAULT_LEASE_NAME, metavar="NAME",
                     help=f"name of the leader Lease (default {DEFAULT_LEASE_NAME})")
    ctl.add_argument("--cilium-namespace", default=DEFAULT_CILIUM_NAMESPACE, metavar="NS",
                     help=f"namespace of the Cilium agent pods (default {DEFAULT_CILIUM_NAMESPACE})")
    ctl.add_argument("--cilium-agent-selector", default=DEFAULT_AGENT_SELECTOR, metavar="SELECTOR",
                     help=f"label selector of the Cilium agent pods (default {DEFAULT_AGENT_SELECTOR})")
    ctl.add_argument("--dry-run", action="store_true",
                     help="observe only: log and count what would be done, write nothing, take no lease")
    ctl.add_argument("--release-all", action="store_true",
                     help="set every gated pod's condition True and exit (for uninstalling); needs no lease")
    ctl.set_defaults(run=_controller)


def _add_audit(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit", help="evaluate every DaemonSet of a live cluster; count the pods Cilium does not manage",
        description="Evaluates every DaemonSet in the cluster with the webhook's policy and counts the pods Cilium "
                    "does not manage today; lists the nodes' NoExecute taints. Exit status: 0 clean, 1 a "
                    "non-exempt DaemonSet has a blanket NoExecute toleration, 2 the cluster cannot be read "
                    "(unreachable within --timeout, no permission, bad kubeconfig) or a bad configuration.")
    audit.add_argument("--kubeconfig", type=Path, metavar="PATH",
                       help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the in-cluster "
                            "service account)")
    audit.add_argument("--context", metavar="NAME", help="kubeconfig context (default: its current context)")
    audit.add_argument("--output", choices=["table", "json"], default="table")
    audit.add_argument("--config", type=Path, metavar="FILE",
                       help="the webhook's configuration file (YAML): exemptions, opt-out, gate, Cilium taint key")
    audit.add_argument("--timeout", type=_positive, default=DEFAULT_AUDIT_TIMEOUT, metavar="SECONDS",
                       help=f"how long each API request may take, connecting included; requests are not retried "
                            f"(default {DEFAULT_AUDIT_TIMEOUT:g})")
    audit.add_argument("--cilium-namespace", default=DEFAULT_CILIUM_NAMESPACE, metavar="NS",
                       help=f"namespace of the Cilium agent pods (default {DEFAULT_CILIUM_NAMESPACE})")
    audit.add_argument("--cilium-agent-selector", default=DEFAULT_AGENT_SELECTOR, metavar="SELECTOR",
                       help=f"label selector of the Cilium agent pods (default {DEFAULT_AGENT_SELECTOR})")
    audit.set_defaults(run=_audit)


def _add_policy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="policy configuration file (YAML)")
    parser.add_argument("--mode", choices=[m.value for m in Mode], help="override the configured mode")


def _serve(args: argparse.Namespace) -> int:
    from webhook.server import build_server  # uvicorn and FastAPI load only for `serve`

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key must be given together")
    server_flags = {name: getattr(args, name) for name in SERVER_FLAGS}
    settings = build_settings(args.config, _mode(args), server=server_flags, host=args.host, port=args.port,
                              tls_cert=args.tls_cert, tls_key=args.tls_key, certs_dir=args.certs_dir)
    cert, key = settings.tls_cert, settings.tls_key
    on_started = None
    if cert is None or key is None:
        if certs.ensure_dev_certs(settings.certs_dir):
            print(f"made a development CA and serving certificate in {settings.certs_dir}/", file=sys.stderr)
        cert, key = settings.certs_dir / certs.CERT_FILE, settings.certs_dir / certs.KEY_FILE
        ca = settings.certs_dir / certs.CA_CERT_FILE
        on_started = functools.partial(_print_how_to_call, settings.host, ca)
    configure_logging(args.log_level)
    server = build_server(settings, cert, key, on_started)
    server.run()
    return 0 if server.started else 1


def _print_how_to_call(host: str, ca: Path, port: int) -> None:
    name = "localhost" if host in ("127.0.0.1", "0.0.0.0", "localhost", "::", "::1") else host
    url = f"https://{name}:{port}"
    print(f"serving {url} (HTTPS only); try:\n"
          f"  curl --cacert {ca} {url}/healthz\n"
          f"  curl --cacert {ca} -H 'Content-Type: application/json' "
          f"--data @tests/fixtures/daemonset_ebs_csi_node.json {url}/validate", file=sys.stderr, flush=True)


def _review(args: argparse.Namespace) -> int:
    from webhook import review

    mode = _mode(args) or (Mode.STRIP if args.fix else None)
    policy = build_settings(args.config, mode).policy
    try:
        documents = review.load_documents(args.paths, sys.stdin)
    except review.ReviewInputError as err:
        print(f"{PROG} review: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    results = review.review_documents(documents, policy)
    report = review.render_json(results, policy) if args.output == "json" else review.render_table(results, policy)
    if args.fix:
        yaml.safe_dump_all(review.fix_documents(documents, policy), sys.stdout, sort_keys=False)
        sys.stderr.write(report)
        return EXIT_USAGE if any(r.error for r in results) else 0
    sys.stdout.write(report)
    return review.exit_status(results)


def _certs(args: argparse.Namespace) -> int:
    # A renewal window as long as the certificate itself would renew it on every run.
    if not 0 <= args.renew_before < certs.SERVING_VALIDITY.days:
        raise ConfigError(f"--renew-before must be from 0 to {certs.SERVING_VALIDITY.days - 1} days")
    if args.in_cluster:
        if args.out_dir is not None or args.kustomize:
            raise ConfigError("--in-cluster keeps the certificates in Secrets: it takes no --out-dir or --kustomize")
        return _certs_in_cluster(args)
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


def _certs_in_cluster(args: argparse.Namespace) -> int:
    from webhook import cluster_certs, kube  # the kubernetes client loads for --in-cluster only

    configure_logging("info")
    # Its retry warnings would only repeat the one error line that a failed call ends with.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    client = kube.connect(args.kubeconfig, args.context, user_agent=f"{PROG}-certs")
    options = cluster_certs.Options(
        namespace=args.namespace, service=args.service, secret=args.secret,
        webhook_configuration=args.webhook_configuration, renew_before=datetime.timedelta(days=args.renew_before),
        force=args.force, wait=cluster_certs.CONFIGURATION_WAIT)
    try:
        cluster_certs.run(client, options)
    except cluster_certs.CertsError as err:
        print(f"{PROG} certs: error: {err}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def _controller(args: argparse.Namespace) -> int:
    # The kubernetes client loads here only: `serve` and `review` never import it.
    from webhook import controller, kube
    from webhook.controller_metrics import ControllerMetrics, ProbeServer
    from webhook.lease import LeaseConfig

    configure_logging("info")
    file = load_config(args.config) if args.config is not None else ConfigFile()
    policy = file.to_policy()
    identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    client = kube.connect(args.kubeconfig, args.context, user_agent=f"{PROG}-controller/{identity}")
    lease = None
    if not (args.dry_run or args.release_all):  # dry-run replicas take no part in the election
        timings = file.controller
        lease = LeaseConfig(namespace=args.lease_namespace or kube.in_cluster_namespace() or "default",
                            name=args.lease_name, identity=identity, lease_duration=timings.lease_duration,
                            renew_deadline=timings.renew_deadline, retry_period=timings.retry_period)
    options = controller.ControllerOptions(
        gate_condition=policy.gate_condition_type, gate_label=policy.gate_label,
        cilium_taint_key=policy.cilium_taint_key,
        policy=controller.GatePolicy(grace_period=args.grace_period, release_after=args.release_after),
        recycle_rate=args.recycle_rate, cilium_namespace=args.cilium_namespace,
        agent_selector=args.cilium_agent_selector, dry_run=args.dry_run, lease=lease, identity=identity)
    try:
        if args.release_all:
            return controller.release_all(client, options)
        metrics = ControllerMetrics(dry_run=args.dry_run)
        gate = controller.GateController(client, options, metrics)
        try:
            probes = ProbeServer(metrics, "0.0.0.0", args.metrics_port, healthy=gate.is_healthy,
                                 ready=gate.is_ready).start()
        except OSError as err:
            raise ConfigError(f"cannot listen on --metrics-port {args.metrics_port}: {err}") from None
        log.info("serving /metrics, /healthz and /readyz", extra={"port": probes.port})
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: gate.stop())  # run() then releases the lease and returns 0
        try:
            return gate.run()
        finally:
            probes.close()
    finally:
        client.close()


def _audit(args: argparse.Namespace) -> int:
    # The kubernetes client loads here only: `serve` and `review` never import it.
    from webhook import audit, kube

    policy = build_settings(args.config).policy
    # No retries: urllib3 would repeat a request that timed out, past --timeout.
    client = kube.connect(args.kubeconfig or kube.default_kubeconfig(), args.context,
                          user_agent=f"{PROG}-audit", retries=0)
    options = audit.AuditOptions(timeout=args.timeout, cilium_namespace=args.cilium_namespace,
                                 agent_selector=args.cilium_agent_selector)
    try:
        cluster, warning = audit.collect(client, options)
        report = audit.build_report(cluster, policy)
    except audit.AuditError as err:
        print(f"{PROG} audit: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        client.close()
    if warning:
        print(f"{PROG} audit: warning: unmanaged pods are not counted (null): {warning}", file=sys.stderr)
    sys.stdout.write(audit.render_json(report) if args.output == "json" else audit.render_table(report, policy))
    return audit.exit_status(report)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), got {text!r}")
    return int(text)


def _version() -> str:
    try:
        return importlib.metadata.version("cilium-startup-guard")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _mode(args: argparse.Namespace) -> Mode | None:
    return Mode(args.mode) if args.mode else None


if __name__ == "__main__":
    sys.exit(main())
