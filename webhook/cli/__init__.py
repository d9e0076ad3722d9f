"""Command line: `cilium-startup-guard` and `python -m webhook`; one parser from the verbs, a ConfigError as one line.
Imports no verb's heavy dependencies: uvicorn, FastAPI and the kubernetes client load when a verb runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import signal
import sys
from collections.abc import Sequence

from webhook.cli import audit, certs, controller, policy, recycle, review, serve
from webhook.cli.common import EXIT_USAGE, PROG
from webhook.errors import ConfigError

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_USAGE", "PROG", "build_parser", "main"]

# What a shell reports for a tool that a closed pipe stopped (`... | head`): 128 + SIGPIPE.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

VERBS = (serve, review, certs, controller, audit, recycle, policy)  # in the order `--help` lists them


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # Whoever read stdout has gone: stop quietly, as any Unix tool does. What is still buffered goes nowhere,
        # so that flushing it at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=(
        "Keeps DaemonSet pods from starting before Cilium manages their network."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in VERBS:
        verb.add_parser(commands)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("cilium-startup-guard")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
