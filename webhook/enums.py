"""The shared vocabulary: modes, review endpoints and outcomes, error, refusal and close reasons, unmanaged scope.
A leaf, stdlib only: bodylimit, protocol and metrics name these without importing the policy or the envelope.
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    WARN = "warn"
    STRIP = "strip"
    DENY = "deny"


class Endpoint(StrEnum):
    MUTATE = "mutate"
    VALIDATE = "validate"


class Outcome(StrEnum):
    ALLOWED = "allowed"
    WARNED = "warned"
    PATCHED = "patched"
    DENIED = "denied"
    ERROR = "error"


class ErrorReason(StrEnum):
    BAD_REQUEST = "bad_request"  # 400, or an AdmissionReview refused with status 400
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415
    INTERNAL = "internal"  # an exception in the webhook: answered per failureMode


class Refusal(StrEnum):
    """Why a request was refused before the app reviewed it."""

    BODY_TOO_LARGE = "body_too_large"
    BODY_TIMEOUT = "body_timeout"
    HEADER_TOO_LARGE = "header_too_large"
    HEADER_TIMEOUT = "header_timeout"


class CloseReason(StrEnum):
    """Why the server closed a connection by itself, outside any request."""

    PER_SOURCE_LIMIT = "per_source_limit"  # at once, on accept
    TOTAL_LIMIT = "total_limit"  # at once, on accept
    TLS_HANDSHAKE_TIMEOUT = "tls_handshake_timeout"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"  # not TLS, no common protocol version, or the client left
    WRITE_TIMEOUT = "write_timeout"  # the client stopped reading an answer
    PIPELINE_LIMIT = "pipeline_limit"  # more requests sent ahead than protocol.MAX_PIPELINED


class UnmanagedScope(StrEnum):
    """Which unmanaged pods the gate controller looks after."""

    GATED = "gated"  # the pods it gates
    ALL = "all"  # every pod on the pod network in the scoped namespaces


class UnmanagedAction(StrEnum):
    """What the gate controller does with an unmanaged pod."""

    RECYCLE = "recycle"  # evict it, so that its owner recreates it under Cilium
    OBSERVE = "observe"  # report it (metric, one Event), write nothing to it
