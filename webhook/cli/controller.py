"""`controller`: its flags and run(), the gate controller or `--release-all`. The kubernetes client loads when it
runs, never at import.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import uuid

from webhook.cli.common import (
    PROG,
    KubeconfigLookup,
    add_cluster_flags,
    add_scope_flags,
    kubeconfig_of,
    non_negative,
    port,
    scope_of,
    workers,
)
from webhook.config import (
    DEFAULT_GRACE_PERIOD,
    DEFAULT_LEASE_NAME,
    DEFAULT_METRICS_PORT,
    DEFAULT_RECYCLE_RATE,
    DEFAULT_RELEASE_AFTER,
    DEFAULT_WORKERS,
    ConfigFile,
    UnmanagedSettings,
    load_config,
)
from webhook.enums import UnmanagedAction, UnmanagedScope
from webhook.errors import ConfigError
from webhook.logs import configure_logging

log = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = commands.add_parser(
        "controller", help="run the gate controller: set the readiness gate once Cilium manages a pod",
        description="Sets the readiness gate of gated pods once their CiliumEndpoint is ready, and evicts pods "
                    "that Cilium will never manage. Exit status: 0 after SIGTERM (or --release-all done), 1 when "
                    "the leader lease could not be renewed (or --release-all left pods), 2 bad usage.")
    add_cluster_flags(ctl, KubeconfigLookup.IN_CLUSTER)
    ctl.add_argument("--grace-period", type=non_negative, default=DEFAULT_GRACE_PERIOD, metavar="SECONDS",
                     help=f"how long a running pod may lack a CiliumEndpoint after the later of its start and its "
                          f"node's Cilium agent becoming ready, before it is evicted (default "
                          f"{DEFAULT_GRACE_PERIOD:g})")
    ctl.add_argument("--recycle-rate", type=non_negative, default=DEFAULT_RECYCLE_RATE, metavar="PER_MINUTE",
                     help=f"evictions a minute, cluster-wide, also the burst; 0 never evicts "
                          f"(default {DEFAULT_RECYCLE_RATE:g})")
    ctl.add_argument("--release-after", type=non_negative, default=DEFAULT_RELEASE_AFTER, metavar="SECONDS",
                     help=f"release a gate still closed this long after its pod started, with a Warning event; "
                          f"0 never (default {DEFAULT_RELEASE_AFTER:g})")
    ctl.add_argument("--workers", type=workers, metavar="N",
                     help=f"reconciles at once, each pod with one worker at a time (default: controller.workers of "
                          f"--config, else {DEFAULT_WORKERS})")
    ctl.add_argument("--metrics-port", type=port, default=DEFAULT_METRICS_PORT, metavar="PORT",
                     help=f"plain HTTP port for /metrics, /healthz and /readyz (default {DEFAULT_METRICS_PORT})")
    ctl.add_argument("--lease-namespace", metavar="NS",
                     help="namespace of the leader Lease (default: the controller's own namespace in a cluster, "
                          "else default)")
    ctl.add_argument("--lease-name", default=DEFAULT_LEASE_NAME, metavar="NAME",
                     help=f"name of the leader Lease (default {DEFAULT_LEASE_NAME})")
    ctl.add_argument("--unmanaged-scope", choices=[s.value for s in UnmanagedScope],
                     help="which unmanaged pods to look after: the gated ones, or every pod on the pod network in "
                          "the scope of --namespace, --exclude-namespace and --selector (default: "
                          "controller.unmanaged.scope of --config, else gated)")
    ctl.add_argument("--unmanaged-action", choices=[a.value for a in UnmanagedAction],
                     help="evict unmanaged pods, or only report them (metric, one Event each) (default: "
                          "controller.unmanaged.action of --config, else recycle for scope gated, observe for all)")
    add_scope_flags(ctl)
    ctl.add_argument("--dry-run", action="store_true",
                     help="observe only: log and count what would be done, write nothing, take no lease")
    ctl.add_argument("--release-all", action="store_true",
                     help="set every gated pod's condition True and exit (for uninstalling); needs no lease")
    ctl.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The kubernetes client loads here only: `serve` and `review` never import it.
    from webhook import kubeclient
    from webhook.controller.lease import LeaseConfig
    from webhook.controller.loop import ControllerOptions, GateController
    from webhook.controller.metrics import ControllerMetrics, ProbeServer
    from webhook.controller.reachability import connect as connect_controller
    from webhook.controller.release import release_all
    from webhook.controller.rules import Timings

    configure_logging("info")
    file = load_config(args.config) if args.config is not None else ConfigFile()
    policy = file.to_policy()
    identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    worker_count = args.workers if args.workers is not None else file.controller.workers
    user_agent = f"{PROG}-controller/{identity}"
    if args.release_all:  # one pass after another, each call once: urllib3's retries help here
        client = kubeclient.connect(kubeconfig_of(args), args.context, user_agent=user_agent)
    else:
        client = connect_controller(kubeconfig_of(args), args.context, user_agent, worker_count)
    lease = None
    if not (args.dry_run or args.release_all):  # dry-run replicas take no part in the election
        timings = file.controller
        lease = LeaseConfig(namespace=args.lease_namespace or kubeclient.in_cluster_namespace() or "default",
                            name=args.lease_name, identity=identity, lease_duration=timings.lease_duration,
                            renew_deadline=timings.renew_deadline, retry_period=timings.retry_period)
    options = ControllerOptions(
        gate_condition=policy.gate_condition_type, gate_label=policy.gate_label,
        cilium_taint_key=policy.cilium_taint_key,
        timings=Timings(grace_period=args.grace_period, release_after=args.release_after),
        recycle_rate=args.recycle_rate, cilium_namespace=args.cilium_namespace,
        agent_selector=args.cilium_agent_selector, unmanaged=unmanaged_settings(args, file), dry_run=args.dry_run,
        lease=lease, identity=identity, workers=worker_count)
    try:
        if args.release_all:
            return release_all(client, options)
        metrics = ControllerMetrics(dry_run=args.dry_run)
        gate = GateController(client, options, metrics)
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


def unmanaged_settings(args: argparse.Namespace, file: ConfigFile) -> UnmanagedSettings:
    """controller.unmanaged of the file, each key replaced by its flag when given."""
    configured = file.controller.unmanaged.to_settings()
    return UnmanagedSettings(
        scope=UnmanagedScope(args.unmanaged_scope) if args.unmanaged_scope else configured.scope,
        action=UnmanagedAction(args.unmanaged_action) if args.unmanaged_action else configured.action,
        pods=scope_of(args, configured.pods))
