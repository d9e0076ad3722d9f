"""`audit`: its flags and run(). The kubernetes client loads when it runs, never at import.
"""

from __future__ import annotations

import argparse
import sys

from webhook.cli.common import (
    EXIT_USAGE,
    PROG,
    KubeconfigLookup,
    add_cluster_flags,
    add_timeout_flag,
    fail,
    kubeconfig_of,
)
from webhook.config import build_settings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit", help="evaluate every DaemonSet of a live cluster; count the pods Cilium does not manage",
        description="Evaluates every DaemonSet (and object of the other configured kinds) in the cluster with the "
                    "webhook's policy and counts the pods Cilium does not manage today; lists the nodes' NoExecute "
                    "taints. Exit status: 0 clean, 1 a non-exempt one has a blanket NoExecute toleration, 2 the "
                    "cluster cannot be read "
                    "(unreachable within --timeout, no permission, bad kubeconfig) or a bad configuration.")
    add_cluster_flags(audit, KubeconfigLookup.LIKE_KUBECTL)
    audit.add_argument("--output", choices=["table", "json"], default="table")
    add_timeout_flag(audit)
    audit.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The kubernetes client loads here only: `serve` and `review` never import it.
    from webhook import audit, kubeclient

    policy = build_settings(args.config).policy
    # No retries: urllib3 would repeat a request that timed out, past --timeout.
    client = kubeclient.connect(kubeconfig_of(args), args.context, user_agent=f"{PROG}-audit", retries=0)
    options = audit.AuditOptions(timeout=args.timeout, cilium_namespace=args.cilium_namespace,
                                 agent_selector=args.cilium_agent_selector)
    try:
        cluster, warning = audit.collect(client, options, policy.kinds)
        report = audit.build_report(cluster, policy)
    except audit.AuditError as err:
        return fail("audit", str(err), EXIT_USAGE)
    finally:
        client.close()
    if warning:
        print(f"{PROG} audit: warning: unmanaged pods are not counted (null): {warning}", file=sys.stderr)
    sys.stdout.write(audit.render_json(report) if args.output == "json" else audit.render_table(report, policy))
    return audit.exit_status(report)
