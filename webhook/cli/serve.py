"""`serve`: its flags and run(), the admission webhook over HTTPS. uvicorn and FastAPI load when it runs; never the
kubernetes client.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from webhook import certs
from webhook.cli.common import add_policy_flags, mode_of, port
from webhook.config import DEFAULT_CERTS_DIR, DEFAULT_PORT, ServerSettings, build_settings
from webhook.errors import ConfigError
from webhook.logs import configure_logging

# The limits and timings: each flag is the ServerSettings field of the same name (--max-body-bytes: max_body_bytes),
# with the field's default at the end of its help.
LIMIT_FLAGS: tuple[tuple[str, type[int] | type[float], str, str], ...] = (
    ("max_body_bytes", int, "N", "refuse larger request bodies with 413"),
    ("max_header_bytes", int, "N", "refuse larger request heads with 431"),
    ("max_connections_per_source", int, "N",
     "connections open at once from one address (an IPv6 /64); more are reset at once"),
    ("max_connections", int, "N", "connections open at once in all"),
    ("tls_handshake_timeout", float, "S", "seconds from accepting a connection to the end of its TLS handshake"),
    ("header_timeout", float, "S", "seconds for a request's headers to arrive"),
    ("body_timeout", float, "S", "seconds for a request's body to arrive"),
    ("write_timeout", float, "S", "seconds a client may leave an answer unread before it is cut off"),
    ("keep_alive_timeout", int, "S", "seconds an idle connection stays open"),
    ("shutdown_delay", float, "S", "on SIGTERM, seconds to keep serving with /readyz at 503"),
    ("shutdown_timeout", float, "S", "seconds to wait for requests in flight after the listener closes"),
    ("reload_interval", float, "S", "seconds between checks of the certificate and config files for changes"),
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the admission webhook over HTTPS")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=port, default=None,
                       help=f"port to listen on, 1-65535, or 0 for any free one (default {DEFAULT_PORT})")
    serve.add_argument("--tls-cert", type=Path, help="serving certificate (PEM); with --tls-key")
    serve.add_argument("--tls-key", type=Path, help="private key of the serving certificate (PEM)")
    serve.add_argument("--certs-dir", type=Path, default=None,
                       help=f"where development certificates are made when no --tls-cert is given "
                            f"(default {DEFAULT_CERTS_DIR})")
    add_policy_flags(serve)
    limits = serve.add_argument_group("limits and timings", "each overrides the config file's server: section")
    for field, kind, metavar, text in LIMIT_FLAGS:
        default = getattr(ServerSettings, field)
        limits.add_argument(f"--{field.replace('_', '-')}", type=kind, metavar=metavar,
                            help=f"{text} (default {default:g})" if kind is float else f"{text} (default {default})")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from webhook.server import build_server  # uvicorn and FastAPI load only for `serve`

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key must be given together")
    server_flags = {field: getattr(args, field) for field, *_ in LIMIT_FLAGS}
    settings = build_settings(args.config, mode_of(args), server=server_flags, host=args.host, port=args.port,
                              tls_cert=args.tls_cert, tls_key=args.tls_key, certs_dir=args.certs_dir)
    cert, key = settings.tls_cert, settings.tls_key
    on_started = None
    if cert is None or key is None:
        if certs.ensure_dev_certs(settings.certs_dir):
            print(f"made a development CA and serving certificate in {settings.certs_dir}/", file=sys.stderr)
        cert, key = settings.certs_dir / certs.CERT_FILE, settings.certs_dir / certs.KEY_FILE
        ca = settings.certs_dir / certs.CA_CERT_FILE
        on_started = functools.partial(_print_how_to_call, settings.host, ca)
    configure_logging(args.log_level)  # first: whatever building the server logs is a JSON line too
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
