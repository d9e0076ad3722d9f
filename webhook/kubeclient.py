"""Connecting to the Kubernetes API: a client from a kubeconfig file or the pod's service account, its settings
(retries, connection pool, proxy, user agent) and the hook that sees every answer. The calls are kube.py's; these
two are the only modules that import the `kubernetes` client.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from webhook.errors import ConfigError, describe_yaml_error
from webhook.kube import Kube

USER_AGENT = "cilium-startup-guard"


class KubeConfigError(ConfigError):
    """No usable client configuration; the message is one line for the person who ran the command. A
    ConfigError, so that the command line answers it like any other bad setting: one line, exit status 2."""


def connect(kubeconfig: Path | None = None, context: str | None = None, user_agent: str = USER_AGENT,
            retries: int | None = None, pool_size: int = 16,
            on_answer: Callable[[int, str], None] | None = None) -> Kube:
    """A client from a kubeconfig file (and context), or the in-cluster service account when none is given.

    `retries`: how often urllib3 repeats a failed request; None keeps its default of 3, which repeats a GET that
    timed out, so a command that promises a bound on waiting passes 0. `pool_size`: keep-alive connections
    kept open. `on_answer(status, error)` is called after every request with the HTTP status of the answer, 0
    (and the connection or timeout error) when none came."""
    configuration = client.Configuration()
    if retries is not None:
        configuration.retries = retries
    try:
        if kubeconfig is not None:
            # persist_config=False: never write refreshed credentials back into the user's file.
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), context=context, client_configuration=configuration,
                persist_config=False)
        else:
            if context is not None:
                raise KubeConfigError("--context needs --kubeconfig")
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    # A file that is not YAML, or YAML of the wrong shape, fails deep in the loader with assorted errors.
    except (ConfigException, OSError, ValueError, TypeError, AttributeError, KeyError, yaml.YAMLError) as err:
        where = f"kubeconfig {kubeconfig}" if kubeconfig is not None else "in-cluster configuration"
        hint = "" if kubeconfig is not None else " (not running in a pod? pass --kubeconfig PATH)"
        if isinstance(err, yaml.YAMLError):
            reason = describe_yaml_error(err)
        elif isinstance(err, (ConfigException, OSError)):
            reason = " ".join(str(err).split())
        else:
            reason = f"not a kubeconfig file ({' '.join(str(err).split())})"
        raise KubeConfigError(f"cannot use {where}: {reason}{hint}") from None
    # The long-lived watches and every other call share this pool.
    configuration.connection_pool_maxsize = pool_size
    # The config loaders re-apply the server address before every request (their token-refresh hook), and the
    # client's `host` setter then reads the proxy variables of the whole environment again: a quarter of a
    # millisecond a call. The environment does not change under a running process: settle the proxy once.
    configuration.proxy = configuration.proxy
    api_client = client.ApiClient(configuration)
    api_client.user_agent = user_agent
    if on_answer is not None:
        api_client.call_api = _observed(api_client.call_api, on_answer)  # type: ignore[method-assign]
    return Kube(api_client)


def _observed(call_api: Callable[..., Any], on_answer: Callable[[int, str], None]) -> Callable[..., Any]:
    """ApiClient.call_api, reporting how the server answered: every request of every API group passes through
    it, and it returns error answers too (the caller raises them later)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            response = call_api(*args, **kwargs)
        except client.ApiException as err:
            on_answer(int(err.status or 0), str(err.reason or ""))
            raise
        except (urllib3.exceptions.HTTPError, OSError) as err:
            on_answer(0, str(err))
            raise
        on_answer(int(getattr(response, "status", 0) or 0), str(getattr(response, "reason", "") or ""))
        return response

    return call


def default_kubeconfig() -> Path | None:
    """Where kubectl looks: $KUBECONFIG (several files joined by ':' are merged by the client), else
    ~/.kube/config when it exists. None: use the in-cluster configuration."""
    if os.environ.get("KUBECONFIG"):
        return Path(os.environ["KUBECONFIG"])
    try:
        home = Path("~/.kube/config").expanduser()
    except RuntimeError:  # no home directory to expand ~ to
        return None
    return home if home.is_file() else None


def in_cluster_namespace() -> str | None:
    """The namespace of the pod this process runs in, when it runs in one."""
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
