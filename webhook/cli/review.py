"""`review`: its flags and run(), the policy offline on manifests or AdmissionReviews. No Kubernetes client.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from webhook.cli.common import EXIT_USAGE, add_policy_flags, fail, mode_of
from webhook.config import build_settings
from webhook.enums import Mode


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    review = commands.add_parser("review", help="run the policy offline on manifests or AdmissionReviews",
                                 description="Reviews the objects of the configured kinds (DaemonSets by default). "
                                             "Exit status: 0 clean, 1 a non-exempt one has a blanket "
                                             "NoExecute toleration, 2 unreadable input or configuration, or no "
                                             "Kubernetes object in the inputs at all.")
    review.add_argument("paths", nargs="+", metavar="FILE|DIR|-",
                        help="YAML or JSON files (multi-document), directories of them, or - for stdin")
    review.add_argument("--output", choices=["table", "json"], default="table")
    review.add_argument("--fix", action="store_true",
                        help="print the manifests as /mutate would leave them (strip mode unless --mode)")
    add_policy_flags(review)
    review.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from webhook import review

    mode = mode_of(args) or (Mode.STRIP if args.fix else None)
    policy = build_settings(args.config, mode).policy
    try:
        documents = review.load_documents(args.paths, sys.stdin)
    except review.ReviewInputError as err:
        return fail("review", str(err), EXIT_USAGE)
    results = review.review_documents(documents, policy)
    report = review.render_json(results, policy) if args.output == "json" else review.render_table(results, policy)
    if args.fix:
        yaml.safe_dump_all(review.fix_documents(documents, policy), sys.stdout, sort_keys=False)
        sys.stderr.write(report)
        return EXIT_USAGE if any(r.error for r in results) else 0
    sys.stdout.write(report)
    return review.exit_status(results)
