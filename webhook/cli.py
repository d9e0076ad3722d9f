"""Command line: `cilium-startup-guard` and `python -m webhook`. Builds Settings and hands them down."""

from __future__ import annotations

import argparse
import datetime
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from webhook import certs
from webhook.config import DEFAULT_CERTS_DIR, DEFAULT_PORT, ConfigError, ServerSettings, build_settings
from webhook.logs import configure_logging
from webhook.policy import Mode

PROG = "cilium-startup-guard"
EXIT_USAGE = 2
# `serve` flags that are ServerSettings fields of the same name.
SERVER_FLAGS = ("max_body_bytes", "max_header_bytes", "header_timeout", "body_timeout", "keep_alive_timeout",
                "shutdown_delay", "shutdown_timeout", "reload_interval")


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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the admission webhook over HTTPS")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help=f"port to listen on (default {DEFAULT_PORT})")
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
    limits.add_argument("--header-timeout", type=float, metavar="S",
                        help=f"seconds for a request's headers to arrive (default {ServerSettings.header_timeout:g})")
    limits.add_argument("--body-timeout", type=float, metavar="S",
                        help=f"seconds for a request's body to arrive (default {ServerSettings.body_timeout:g})")
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
                    "expiry; it changes nothing while the certificates have more than --renew-before days left.")
    certs_cmd.add_argument("--out-dir", type=Path, default=DEFAULT_CERTS_DIR)
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
                           help="the Secret the webhook mounts (default %(default)s)")
    certs_cmd.add_argument("--webhook-configuration", default=certs.DEFAULT_WEBHOOK_CONFIGURATION,
                           help="name of both webhook configurations (default %(default)s)")
    certs_cmd.set_defaults(run=_certs)
    return parser


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
    server = build_server(settings, cert, key, on_started)
    configure_logging(args.log_level)
    server.run()
    return 0 if server.started else 1


def _print_how_to_call(host: str, ca: Path, port: int) -> None:
    name = "localhost" if host in ("127.0.0.1", "0.0.0.0", "localhost", "::", "::1") else host
    url = f"https://{name}:{port}"
    print(f"serving {url} (HTTPS only); try:\n"
          f"  curl --cacert {ca} {url}/healthz\n"
          f"  curl --cacert {ca} -H 'Content-Type: application/json' "
          f"--data @tests/fixtures/daemonset_ebs_csi_node.json {url}/mutate", file=sys.stderr, flush=True)


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
    out: Path = args.out_dir
    # A renewal window as long as the certificate itself would renew it on every run.
    if not 0 <= args.renew_before < certs.SERVING_VALIDITY.days:
        raise ConfigError(f"--renew-before must be from 0 to {certs.SERVING_VALIDITY.days - 1} days")
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


def _mode(args: argparse.Namespace) -> Mode | None:
    return Mode(args.mode) if args.mode else None


if __name__ == "__main__":
    sys.exit(main())
