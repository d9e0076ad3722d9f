"""`recycle`: its flags and run(). The kubernetes client loads when it runs, never at import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from webhook.cli.common import (
    EXIT_USAGE,
    PROG,
    KubeconfigLookup,
    add_cluster_flags,
    add_scope_flags,
    add_timeout_flag,
    fail,
    kubeconfig_of,
    non_negative,
    positive,
    scope_of,
)
from webhook.config import DEFAULT_GRACE_PERIOD, DEFAULT_RECYCLE_RATE, ConfigFile, load_config


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    recycle = commands.add_parser(
        "recycle", help="evict, once, the pods Cilium should manage and does not, so that they come back under it",
        description="Lists the pods Cilium should manage and does not (Running, not host-network, on a node whose "
                    "Cilium agent is ready, past the grace period, no CiliumEndpoint of their own) and evicts those "
                    "whose owner will recreate them, at --rate a minute; PodDisruptionBudgets apply. Exit status: 0 "
                    "nothing unmanaged left in scope, 1 some remain (refused, reported only, or a dry run), 2 the "
                    "cluster cannot be read or does not serve CiliumEndpoints, or bad usage.")
    add_cluster_flags(recycle, KubeconfigLookup.LIKE_KUBECTL)
    add_scope_flags(recycle)
    recycle.add_argument("--dry-run", action="store_true", help="evict nothing; say what would be evicted")
    recycle.add_argument("--rate", type=positive, default=DEFAULT_RECYCLE_RATE, metavar="PER_MINUTE",
                         help=f"evictions a minute, also the burst (default {DEFAULT_RECYCLE_RATE:g})")
    recycle.add_argument("--grace-period", type=non_negative, default=DEFAULT_GRACE_PERIOD, metavar="SECONDS",
                         help=f"how long a running pod may lack a CiliumEndpoint after the later of its start and its "
                              f"node's Cilium agent becoming ready (default {DEFAULT_GRACE_PERIOD:g})")
    recycle.add_argument("--include-bare", action="store_true",
                         help="also evict pods without a controlling owner: they are NOT recreated")
    recycle.add_argument("--output", choices=["table", "json"], default="table",
                         help="a table, or one JSON object a line per pod, printed as it is done")
    add_timeout_flag(recycle)
    recycle.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The kubernetes client loads here only: `serve` and `review` never import it.
    import time

    from webhook import kubeclient
    from webhook.controller.rules import Timings
    from webhook.recycle import RecycleError, RecycleOptions, find, recycle, render_json_line, render_table
    from webhook.recycle import exit_status as status_of

    file = load_config(args.config) if args.config is not None else ConfigFile()
    policy = file.to_policy()
    options = RecycleOptions(
        scope=scope_of(args, file.controller.unmanaged.to_settings().pods),
        timings=Timings(grace_period=args.grace_period), rate=args.rate, include_bare=args.include_bare,
        dry_run=args.dry_run, timeout=args.timeout, cilium_namespace=args.cilium_namespace,
        agent_selector=args.cilium_agent_selector, taint_key=policy.cilium_taint_key,
        gate_condition=policy.gate_condition_type)
    # No retries: urllib3 would repeat a request that timed out, past --timeout.
    client = kubeclient.connect(kubeconfig_of(args), args.context, user_agent=f"{PROG}-recycle", retries=0)
    rows = []
    try:
        candidates = find(client, options, time.time())
        for row in recycle(client, options, candidates, on_wait=_tell_wait(options.rate)):
            rows.append(row)
            if args.output == "json":
                sys.stdout.write(render_json_line(row))
                sys.stdout.flush()
    except RecycleError as err:
        if args.output == "table" and rows:
            sys.stdout.write(render_table(rows, options.dry_run))
        return fail("recycle", str(err), EXIT_USAGE)
    finally:
        client.close()
    if args.output == "table":
        sys.stdout.write(render_table(rows, options.dry_run))
    return status_of(rows)


def _tell_wait(rate: float) -> Callable[[float, int], None]:
    def tell(seconds: float, left: int) -> None:
        print(f"{PROG} recycle: {left} pod(s) left to evict; the next in {seconds:.0f} s (--rate {rate:g} a minute)",
              file=sys.stderr, flush=True)

    return tell
