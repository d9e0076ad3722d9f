"""`policy export`: the webhook's policy as Kubernetes admission policies (YAML on stdout). No Kubernetes client.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from webhook.cli.common import EXIT_USAGE, PROG, add_policy_flags, fail, mode_of
from webhook.config import build_settings
from webhook.export import API_VERSIONS, Form, NothingToExport, export


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = commands.add_parser("policy", help="the policy in other forms",
                                 description="The webhook's policy in other forms.")
    verbs = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    exporting = verbs.add_parser(
        "export", help="print the policy as Kubernetes admission policies (YAML)",
        description="Prints, from the webhook's configuration, a ValidatingAdmissionPolicy (warn, deny) or "
                    "MutatingAdmissionPolicies (strip, readiness gate) with their bindings, to apply instead of or "
                    "beside the webhook. Exit status: 0 printed, 2 bad usage or configuration, or a form that "
                    "cannot do what the mode asks (strip has no ValidatingAdmissionPolicy).")
    exporting.add_argument("--format", required=True, choices=[f.value for f in Form],
                           help="vap: ValidatingAdmissionPolicy (GA in Kubernetes 1.30); map: "
                                "MutatingAdmissionPolicy (beta in 1.34, GA in 1.36)")
    exporting.add_argument("--api-version", default=API_VERSIONS[0], choices=API_VERSIONS,
                           help=f"of admissionregistration.k8s.io (default {API_VERSIONS[0]})")
    add_policy_flags(exporting)
    exporting.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    policy = build_settings(args.config, mode_of(args)).policy
    try:
        objects = export(policy, Form(args.format), args.api_version)
    except NothingToExport as err:
        return fail("policy export", str(err), EXIT_USAGE)
    source = str(args.config) if args.config else "the built-in defaults"
    sys.stdout.write(f"# {PROG} policy export --format {args.format} --mode {policy.mode.value}, from {source}\n")
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False, width=120)
    return 0
