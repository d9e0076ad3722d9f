"""What the verbs share: program name, exit codes, the cluster flags and --timeout (one definition, one help text),
argument types.
Imports no verb, and never the kubernetes client at import: `serve` and `review` must not load it.
"""

from __future__ import annotations

import argparse
import math
import sys
from enum import StrEnum
from pathlib import Path

from webhook.config import (
    DEFAULT_AGENT_SELECTOR,
    DEFAULT_CILIUM_NAMESPACE,
    DEFAULT_REQUEST_TIMEOUT,
    PodScope,
    label_selector_problem,
    namespace_problem,
)
from webhook.enums import Mode

PROG = "cilium-startup-guard"
EXIT_USAGE = 2  # bad usage, configuration or input: one line on stderr

ArgumentContainer = argparse.ArgumentParser | argparse._ArgumentGroup


class KubeconfigLookup(StrEnum):
    """Where a verb finds its cluster when --kubeconfig is not given."""

    IN_CLUSTER = "the in-cluster service account"  # controller and certs: they run in a pod
    LIKE_KUBECTL = "$KUBECONFIG, else ~/.kube/config, else the in-cluster service account"  # audit: run by people


def add_cluster_flags(parser: ArgumentContainer, lookup: KubeconfigLookup, *, config: bool = True,
                      cilium: bool = True) -> None:
    """--kubeconfig and --context, and unless turned off --config, --cilium-namespace and --cilium-agent-selector.
    `lookup` is what the verb does without --kubeconfig; kubeconfig_of() does it."""
    parser.add_argument("--kubeconfig", type=Path, metavar="PATH", help=f"kubeconfig file (default: {lookup})")
    parser.add_argument("--context", metavar="NAME", help="kubeconfig context (default: the file's current context)")
    parser.set_defaults(kubeconfig_lookup=lookup)
    if config:
        add_config_flag(parser)
    if cilium:
        parser.add_argument("--cilium-namespace", default=DEFAULT_CILIUM_NAMESPACE, metavar="NS",
                            help=f"namespace of the Cilium agent pods (default {DEFAULT_CILIUM_NAMESPACE})")
        parser.add_argument("--cilium-agent-selector", default=DEFAULT_AGENT_SELECTOR, metavar="SELECTOR",
                            help=f"label selector of the Cilium agent pods (default {DEFAULT_AGENT_SELECTOR})")


def kubeconfig_of(args: argparse.Namespace) -> Path | None:
    """The kubeconfig file to use, None for the in-cluster service account, as add_cluster_flags() documents."""
    given: Path | None = args.kubeconfig
    if given is not None or args.kubeconfig_lookup is KubeconfigLookup.IN_CLUSTER:
        return given
    from webhook import kubeclient  # only verbs that talk to a cluster get here

    return kubeclient.default_kubeconfig()


def add_timeout_flag(parser: ArgumentContainer) -> None:
    """--timeout of the one-shot verbs that read a cluster (`audit`, `recycle`): they connect with no retries, so
    that this bounds each request."""
    parser.add_argument("--timeout", type=positive, default=DEFAULT_REQUEST_TIMEOUT, metavar="SECONDS",
                        help=f"how long each API request may take, connecting included; requests are not retried "
                             f"(default {DEFAULT_REQUEST_TIMEOUT:g})")


def add_scope_flags(parser: ArgumentContainer) -> None:
    """--namespace, --exclude-namespace and --selector: which pods `recycle` and the controller's scope `all` look
    at. Each given flag replaces its key of the file's controller.unmanaged; scope_of() applies them."""
    parser.add_argument("--namespace", action="append", type=namespace_name, metavar="NS",
                        help="only pods in this namespace; repeat for more (default: every namespace)")
    parser.add_argument("--exclude-namespace", action="append", type=namespace_name, metavar="NS",
                        help="never pods in this namespace; repeatable")
    parser.add_argument("--selector", type=label_selector, metavar="SELECTOR",
                        help="only pods with these labels, as kubectl get -l takes them (default: every pod)")


def scope_of(args: argparse.Namespace, configured: PodScope) -> PodScope:
    return PodScope(
        namespaces=tuple(args.namespace) if args.namespace is not None else configured.namespaces,
        exclude_namespaces=(tuple(args.exclude_namespace) if args.exclude_namespace is not None
                            else configured.exclude_namespaces),
        selector=args.selector if args.selector is not None else configured.selector)


def add_config_flag(parser: ArgumentContainer) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="the webhook's configuration file (YAML), the config.yaml of its ConfigMap; each "
                             "command reads the settings it uses (default: the built-in settings)")


def add_policy_flags(parser: ArgumentContainer) -> None:
    add_config_flag(parser)
    parser.add_argument("--mode", choices=[m.value for m in Mode], help="override the configured mode")


def mode_of(args: argparse.Namespace) -> Mode | None:
    return Mode(args.mode) if args.mode else None


def fail(verb: str, message: str, status: int) -> int:
    """One line on stderr, named after the verb; returns `status` for the verb to return."""
    print(f"{PROG} {verb}: error: {message}", file=sys.stderr)
    return status


# --- argument types ---


def non_negative(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text!r}")
    return value


def positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):  # an infinite rate or timeout is none at all; nan fails every comparison
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), got {text!r}")
    return int(text)


def namespace_name(text: str) -> str:
    if problem := namespace_problem(text):
        raise argparse.ArgumentTypeError(problem)
    return text


def label_selector(text: str) -> str:
    if problem := label_selector_problem(text):
        raise argparse.ArgumentTypeError(problem)
    return text.strip()


def workers(text: str) -> int:
    """A worker count: a whole number from 1 to 64 (the config file's controller.workers has the same bounds)."""
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 64, got {text!r}")
    return int(text)
