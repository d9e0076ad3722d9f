"""Settings: built-in defaults < the --config YAML file (checked with pydantic) < command-line flags.
Reads files only when asked, nothing at import; imports no FastAPI, no uvicorn, no kubernetes client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

from webhook.enums import Mode, UnmanagedAction, UnmanagedScope
from webhook.errors import ConfigError, describe_yaml_error
from webhook.policy import (
    CILIUM_TAINT_KEY,
    DEFAULT_GATE_CONDITION,
    DEFAULT_GATE_LABEL,
    DEFAULT_KINDS,
    Exemption,
    InjectAt,
    PolicyConfig,
    is_blanket_noexecute,
)
from webhook.workloads import Kind

DEFAULT_CERTS_DIR = Path("certs")
DEFAULT_PORT = 8443
MIB = 1024 * 1024
# Gate controller flags.
DEFAULT_GRACE_PERIOD = 60.0
DEFAULT_RECYCLE_RATE = 5.0  # evictions per minute, cluster-wide
# Reconciles at once. A condition costs one write of a few milliseconds on a real API server; 16 keep that many in
# flight, where the scale benchmark stops getting faster (docs/performance.md).
DEFAULT_WORKERS = 16
# Ten minutes, Kubernetes' default progressDeadlineSeconds: past it a rollout counts as stuck anyway, and a Cilium
# agent that is not ready by then needs a person, whom the Warning event and the metric call.
DEFAULT_RELEASE_AFTER = 600.0
DEFAULT_METRICS_PORT = 9090
DEFAULT_LEASE_NAME = "cilium-startup-guard-controller"
DEFAULT_CILIUM_NAMESPACE = "kube-system"
DEFAULT_AGENT_SELECTOR = "k8s-app=cilium"
# `audit` and `recycle`: how long each API request may take, connecting included.
DEFAULT_REQUEST_TIMEOUT = 10.0
# Gate controller leader election, client-go's usual timings; the config file may change them.
DEFAULT_LEASE_DURATION = 15
DEFAULT_RENEW_DEADLINE = 10.0
DEFAULT_RETRY_PERIOD = 2.0

# Kubernetes "qualified name": an optional DNS-subdomain prefix and "/", then a name of at most 63 characters.
_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_QUALIFIED_NAME = re.compile(rf"({_PREFIX}/)?{_NAME}")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS label
_LABEL_VALUE = rf"({_NAME})?"
# One requirement of a label selector, as kube-apiserver parses it: key, !key, key=v, key==v, key!=v,
# key in (v,...), key notin (v,...).
_LABEL_REQUIREMENT = re.compile(
    r"\s*(!\s*(?P<absent>\S+)|(?P<key>[^\s!=(),]+)\s*((?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)"
    r"|\s+(in|notin)\s*\((?P<values>[^()]*)\))?)\s*")


@dataclass(frozen=True)
class PodScope:
    """Which pods `recycle` and the controller's `all` scope look at: `--namespace`, `--exclude-namespace`,
    `--selector`."""

    namespaces: tuple[str, ...] = ()  # none: every namespace
    exclude_namespaces: tuple[str, ...] = ()
    selector: str = ""  # a label selector; "" selects every pod

    def includes(self, namespace: str) -> bool:
        return (not self.namespaces or namespace in self.namespaces) and namespace not in self.exclude_namespaces


@dataclass(frozen=True)
class UnmanagedSettings:
    """The gate controller's unmanaged scope and action; `controller.unmanaged` in the file, and flags."""

    scope: UnmanagedScope = UnmanagedScope.GATED
    action: UnmanagedAction | None = None  # None: recycle for the gated scope, observe for all
    pods: PodScope = field(default_factory=PodScope)

    @property
    def effective_action(self) -> UnmanagedAction:
        if self.action is not None:
            return self.action
        return UnmanagedAction.RECYCLE if self.scope is UnmanagedScope.GATED else UnmanagedAction.OBSERVE


@dataclass(frozen=True)
class ServerSettings:
    """Limits and timings of the HTTPS server; read at start-up only (a reload does not change them).

    The documentation's "Limits and timeouts" table gives the reasons for each default, with sources.
    """

    # etcd stores at most 1.5 MiB per object (https://etcd.io/docs/v3.5/dev-guide/limit/) and a review carries two
    # of them (object and oldObject); kube-apiserver takes write bodies up to the same 3 MiB, MaxRequestBodyBytes in
    # https://github.com/kubernetes/kubernetes/blob/019f335d6b88bcf40180069e160f22f880afd409/staging/src/k8s.io/
    # apiserver/pkg/server/config.go
    max_body_bytes: int = 3 * MIB
    # Request line and headers; kube-apiserver sends well under 4 KiB.
    max_header_bytes: int = 64 * 1024
    # Connections open at once from one source address, and in all. kube-apiserver keeps up to 25 idle
    # connections per webhook host and opens more only while more calls are in flight (idleConnsPerHost and
    # TLSHandshakeTimeout in https://github.com/kubernetes/kubernetes/blob/079d5e5fffad73840943d379bb5e60bc4845bd6a/
    # staging/src/k8s.io/client-go/transport/cache.go); each connection costs about 35-50 KiB.
    max_connections_per_source: int = 128
    max_connections: int = 1024
    # From accept to the end of the TLS handshake. kube-apiserver's client gives up after 10 s itself (client-go's
    # TLSHandshakeTimeout); a handshake on a cluster network takes milliseconds.
    tls_handshake_timeout: float = 5.0
    # How long a client may leave the server's send buffers full (not reading the answer) before it is cut off.
    write_timeout: float = 10.0
    # From connection (or first byte of a request) to the end of its headers, and for the whole body.
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    # Longer than Go's idle-connection timeout (90 s), so kube-apiserver closes idle connections first and
    # never races a server-side close with a new request.
    keep_alive_timeout: int = 120
    # On SIGTERM: answer /readyz 503 and keep serving this long, then stop accepting and drain.
    shutdown_delay: float = 0.0
    # Bound on draining in-flight requests after the listener is closed.
    shutdown_timeout: float = 20.0
    # How often the certificate and the config file are checked for changes (a stat() of each).
    reload_interval: float = 1.0


@dataclass(frozen=True)
class Settings:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    certs_dir: Path = DEFAULT_CERTS_DIR
    # On an internal error: allow the request with a warning (like failurePolicy: Ignore) or refuse it.
    allow_on_error: bool = True
    config_file: Path | None = None
    # --mode wins over the file's mode, also after the file is reloaded.
    mode_override: Mode | None = None
    server: ServerSettings = field(default_factory=ServerSettings)
    # The ServerSettings fields given as flags: they win over the file's server: keys.
    server_flags: tuple[str, ...] = ()


def _is_qualified_name(value: str) -> bool:
    prefix, _, _ = value.rpartition("/")
    return bool(_QUALIFIED_NAME.fullmatch(value)) and len(prefix) <= 253


def label_selector_problem(text: str) -> str | None:
    """Why `text` is not a label selector kube-apiserver would take, or None when it is one ("" selects all)."""
    for term in _selector_terms(text):
        m = _LABEL_REQUIREMENT.fullmatch(term)
        if m is None:
            return f"{term.strip()!r} is not a label requirement (key, !key, key=value, key!=value, key in (a,b))"
        key = m.group("absent") or m.group("key")
        if not _is_qualified_name(key):
            return f"{key!r} is not a valid label key"
        values = [m.group("value")] if m.group("op") else (m.group("values") or "").split(",")
        if m.group("values") is not None or m.group("op"):
            for value in values:
                if not re.fullmatch(_LABEL_VALUE, value.strip()):
                    return f"{value.strip()!r} is not a valid label value"
    return None


def namespace_problem(name: str) -> str | None:
    return None if _NAMESPACE.fullmatch(name) else f"{name!r} is not a namespace name (a DNS label)"


def _selector_terms(text: str) -> list[str]:
    """The comma-separated requirements, commas inside (a,b) lists left alone."""
    terms, depth, current = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    return [*terms, current] if text.strip() else []


class _Strict(BaseModel):
    # No inf or nan: an infinite timeout is no timeout, and nan compares false with every bound.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _ExemptionFile(_Strict):
    namespace: str | None = None
    name: str | None = None
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")

    @model_validator(mode="after")
    def _not_empty(self) -> _ExemptionFile:
        if self.namespace is None and self.name is None and not self.match_labels:
            raise ValueError("an exemption needs namespace, name or matchLabels (an empty one would match all)")
        return self


class _TolerationFile(_Strict):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = None
    toleration_seconds: StrictInt | None = Field(default=None, alias="tolerationSeconds")

    @model_validator(mode="after")
    def _valid(self) -> _TolerationFile:
        as_dict = self.model_dump(by_alias=True, exclude_none=True)
        if is_blanket_noexecute(as_dict):
            raise ValueError("a replacement toleration must not be a blanket NoExecute toleration itself")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key needs operator: Exists")
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator: Exists takes no value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect: NoExecute")
        return self


class _ReadinessGateFile(_Strict):
    enabled: StrictBool = True
    condition_type: str = Field(default=DEFAULT_GATE_CONDITION, alias="conditionType")
    pod_label: str = Field(default=DEFAULT_GATE_LABEL, alias="podLabel")
    inject_at: InjectAt = Field(default=InjectAt.POD, alias="injectAt")

    @model_validator(mode="after")
    def _names(self) -> _ReadinessGateFile:
        for what, value in (("conditionType", self.condition_type), ("podLabel", self.pod_label)):
            if not _is_qualified_name(value):
                raise ValueError(f"{what} {value!r} is not a valid Kubernetes qualified name")
        return self


class _ServerFile(_Strict):
    model_config = ConfigDict(populate_by_name=True)  # merged with _Strict's: pydantic joins a subclass's config

    max_body_bytes: StrictInt = Field(default=ServerSettings.max_body_bytes, alias="maxBodyBytes", ge=1024)
    max_header_bytes: StrictInt = Field(default=ServerSettings.max_header_bytes, alias="maxHeaderBytes", ge=1024)
    max_connections_per_source: StrictInt = Field(default=ServerSettings.max_connections_per_source,
                                                  alias="maxConnectionsPerSource", ge=1)
    max_connections: StrictInt = Field(default=ServerSettings.max_connections, alias="maxConnections", ge=1)
    tls_handshake_timeout: float = Field(default=ServerSettings.tls_handshake_timeout,
                                         alias="tlsHandshakeTimeoutSeconds", gt=0)
    write_timeout: float = Field(default=ServerSettings.write_timeout, alias="writeTimeoutSeconds", gt=0)
    header_timeout: float = Field(default=ServerSettings.header_timeout, alias="headerTimeoutSeconds", gt=0)
    body_timeout: float = Field(default=ServerSettings.body_timeout, alias="bodyTimeoutSeconds", gt=0)
    keep_alive_timeout: StrictInt = Field(default=ServerSettings.keep_alive_timeout,
                                          alias="keepAliveTimeoutSeconds", ge=1)
    shutdown_delay: float = Field(default=ServerSettings.shutdown_delay, alias="shutdownDelaySeconds", ge=0)
    shutdown_timeout: float = Field(default=ServerSettings.shutdown_timeout, alias="shutdownTimeoutSeconds", gt=0)
    reload_interval: float = Field(default=ServerSettings.reload_interval, alias="reloadIntervalSeconds", gt=0)

    @model_validator(mode="after")
    def _caps(self) -> _ServerFile:
        if self.max_connections_per_source > self.max_connections:
            raise ValueError("maxConnectionsPerSource must not exceed maxConnections")
        return self

    def to_settings(self) -> ServerSettings:
        return ServerSettings(**self.model_dump())


class _UnmanagedFile(_Strict):
    """The gate controller's unmanaged scope; the same as its flags, which win."""

    scope: UnmanagedScope = UnmanagedScope.GATED
    action: UnmanagedAction | None = None
    namespaces: list[str] = Field(default_factory=list)
    exclude_namespaces: list[str] = Field(default_factory=list, alias="excludeNamespaces")
    selector: str = ""

    @model_validator(mode="after")
    def _valid(self) -> _UnmanagedFile:
        for name in (*self.namespaces, *self.exclude_namespaces):
            if problem := namespace_problem(name):
                raise ValueError(problem)
        if problem := label_selector_problem(self.selector):
            raise ValueError(f"selector: {problem}")
        return self

    def to_settings(self) -> UnmanagedSettings:
        return UnmanagedSettings(self.scope, self.action, PodScope(
            tuple(self.namespaces), tuple(self.exclude_namespaces), self.selector.strip()))


class _ControllerFile(_Strict):
    """The gate controller's workers, leader-election timings and unmanaged scope; its other settings are flags."""

    workers: StrictInt = Field(default=DEFAULT_WORKERS, ge=1, le=64)
    lease_duration: StrictInt = Field(default=DEFAULT_LEASE_DURATION, alias="leaseDurationSeconds", ge=1)
    renew_deadline: float = Field(default=DEFAULT_RENEW_DEADLINE, alias="renewDeadlineSeconds", gt=0)
    retry_period: float = Field(default=DEFAULT_RETRY_PERIOD, alias="retryPeriodSeconds", gt=0)
    unmanaged: _UnmanagedFile = Field(default_factory=_UnmanagedFile)

    @model_validator(mode="after")
    def _ordered(self) -> _ControllerFile:
        # A leader must stop writing (renew deadline) before anyone else may take the lease (duration).
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("needs retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds")
        return self


class ConfigFile(_Strict):
    """The YAML file (a mounted ConfigMap in a cluster). Keys are camelCase, as in Kubernetes objects."""

    mode: Mode = Mode.WARN
    allow_opt_out: StrictBool = Field(default=True, alias="allowOptOut")
    exemptions: list[_ExemptionFile] | None = None  # None keeps the built-in list
    readiness_gate: _ReadinessGateFile = Field(default_factory=_ReadinessGateFile, alias="readinessGate")
    cilium_taint_key: str = Field(default=CILIUM_TAINT_KEY, alias="ciliumTaintKey")
    replacement_tolerations: list[_TolerationFile] = Field(default_factory=list, alias="replacementTolerations")
    kinds: list[Kind] = Field(default_factory=lambda: sorted(DEFAULT_KINDS), min_length=1)
    failure_mode: Literal["allow", "deny"] = Field(default="allow", alias="failureMode")
    server: _ServerFile = Field(default_factory=_ServerFile)
    controller: _ControllerFile = Field(default_factory=_ControllerFile)

    @model_validator(mode="after")
    def _taint_key(self) -> ConfigFile:
        if not _is_qualified_name(self.cilium_taint_key):
            raise ValueError(f"ciliumTaintKey {self.cilium_taint_key!r} is not a valid taint key")
        if any(t.key == self.cilium_taint_key for t in self.replacement_tolerations):
            raise ValueError("replacementTolerations must not tolerate the Cilium taint")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError("kinds lists a kind twice")
        return self

    def to_policy(self) -> PolicyConfig:
        exemptions = PolicyConfig().exemptions if self.exemptions is None else tuple(
            Exemption(namespace=e.namespace, name=e.name, labels=tuple(sorted(e.match_labels.items())))
            for e in self.exemptions
        )
        return PolicyConfig(
            mode=self.mode,
            exemptions=exemptions,
            allow_opt_out=self.allow_opt_out,
            readiness_gate=self.readiness_gate.enabled,
            gate_condition_type=self.readiness_gate.condition_type,
            gate_label=self.readiness_gate.pod_label,
            inject_at=self.readiness_gate.inject_at,
            kinds=frozenset(self.kinds),
            cilium_taint_key=self.cilium_taint_key,
            replacement_tolerations=tuple(
                t.model_dump(by_alias=True, exclude_none=True) for t in self.replacement_tolerations
            ),
        )


def parse_config(text: str, source: str) -> ConfigFile:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {source}: {describe_yaml_error(err)}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {source}: expected a mapping of settings, got {type(document).__name__}")
    try:
        return ConfigFile.model_validate(document)
    except ValidationError as err:
        raise ConfigError(f"config file {source}: {_describe(err)}") from None


def load_config(path: Path) -> ConfigFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: cannot read it: {err}") from None
    return parse_config(text, str(path))


def build_settings(config_file: Path | None = None, mode: Mode | None = None,
                   server: dict[str, Any] | None = None, **overrides: Any) -> Settings:
    """Defaults < config file < flags. `server` holds ServerSettings fields and `overrides` Settings fields
    given as flags; None means "not given"."""
    file = load_config(config_file) if config_file is not None else ConfigFile()
    given_server = {k: v for k, v in (server or {}).items() if v is not None}
    try:
        # Flags pass the same checks as the file's keys.
        server_settings = file.server.model_validate({**file.server.model_dump(), **given_server}).to_settings()
    except ValidationError as err:
        raise ConfigError(f"server settings: {_describe(err)}") from None
    given = {k: v for k, v in overrides.items() if v is not None}
    return Settings(policy=_policy(file, mode), allow_on_error=file.failure_mode == "allow",
                    config_file=config_file, mode_override=mode, server=server_settings,
                    server_flags=tuple(sorted(given_server)), **given)


def reload_settings(current: Settings) -> tuple[Settings, tuple[str, ...]]:
    """The policy and failure mode re-read from current.config_file, --mode re-applied; the rest is kept
    (the server: section is read at start-up only). Also the server: keys whose new values are not in force
    (they wait for a restart), as spelled in the file.

    Raises ConfigError for a file that cannot be used, so that the caller keeps `current`.
    """
    if current.config_file is None:
        return current, ()
    file = load_config(current.config_file)
    fresh = replace(current, policy=_policy(file, current.mode_override), allow_on_error=file.failure_mode == "allow")
    return fresh, _server_changes(current, file)


def _server_changes(current: Settings, file: ConfigFile) -> tuple[str, ...]:
    flags = {name: getattr(current.server, name) for name in current.server_flags}
    wanted = {**file.server.model_dump(), **flags}
    in_force = vars(current.server)
    return tuple(_ServerFile.model_fields[name].alias or name for name in _ServerFile.model_fields
                 if wanted[name] != in_force[name])


def _policy(file: ConfigFile, mode: Mode | None) -> PolicyConfig:
    policy = file.to_policy()
    return policy if mode is None else replace(policy, mode=mode)


def _describe(err: ValidationError) -> str:
    problems = []
    for item in err.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)
