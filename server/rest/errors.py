"""The error table of the REST edge: gRPC status -> OpenAI error body + HTTP status.

One table, one place. A failed upstream call becomes
`{"error": {"message", "type", "param", "code"}}`:

- the HTTP status comes from the gRPC code, refined by `ErrorInfo.reason`
  where one code covers client and server faults (`_REASON_OVERRIDES`);
- `param` is the first `BadRequest` field violation, renamed from the proto
  field to the OpenAI parameter (`images[0]` -> `image`);
- `code` is `ErrorInfo.reason` lowercased, except that a safety refusal is
  OpenAI's `moderation_blocked`;
- the message is the service's own (short and safe by contract) only when
  the status carries the service's `ErrorInfo`; anything else (the channel's
  "failed to connect to ..." text, a proxy's status) is replaced by a fixed
  message so no infrastructure detail leaks;
- `RetryInfo` becomes `Retry-After` (seconds, rounded up) and
  `retry-after-ms`, which the OpenAI SDKs honour; failures a retry cannot
  fix (a conflict, a deployment without credentials) carry
  `x-should-retry: false` so the SDKs do not retry their 409s and 5xx.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import Response

# The `ErrorInfo.domain` of statuses the image service itself raised.
SERVICE_ERROR_DOMAIN = "image.chuizi.ai"
_DETAILS_KEY = "grpc-status-details-bin"
# (key, value) pairs, as grpc.aio's Metadata and grpc.Status carry them (the
# grpc stubs disagree on the element type, hence Any).
TrailingMetadata = Iterable[Any] | None
# Sent on a 429 whose status carried no RetryInfo, so OpenAI clients wait a
# moment rather than hammering a throttled upstream.
DEFAULT_RETRY_AFTER_S = 1.0

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
RATE_LIMIT = "rate_limit_error"
SERVER = "server_error"
MODERATION = "image_generation_user_error"
INSUFFICIENT_QUOTA = "insufficient_quota"

# The `code` of every error the sidecar raises itself (docs/rest.md: Errors).
# Field errors share the service's `invalid_argument`, so a caller sees one
# code for "n is out of range" whichever side noticed; statuses without the
# service's ErrorInfo get their gRPC code's name (`unavailable`, ...).
INVALID_ARGUMENT = "invalid_argument"
INVALID_JSON = "invalid_json"
INVALID_MULTIPART = "invalid_multipart"
INVALID_IMAGE_FORMAT = "invalid_image_format"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
REQUEST_TOO_LARGE = "request_too_large"
HEADER_TOO_LARGE = "request_header_too_large"
INVALID_AUTHORIZATION_HEADER = "invalid_authorization_header"
MODEL_NOT_FOUND = "model_not_found"
UNKNOWN_URL = "unknown_url"
METHOD_NOT_ALLOWED = "method_not_allowed"
SHUTTING_DOWN = "shutting_down"
INTERNAL = "internal"
SIDECAR_CODES = frozenset(
    {
        INVALID_ARGUMENT,
        INVALID_JSON,
        INVALID_MULTIPART,
        INVALID_IMAGE_FORMAT,
        UNSUPPORTED_MEDIA_TYPE,
        REQUEST_TOO_LARGE,
        HEADER_TOO_LARGE,
        INVALID_AUTHORIZATION_HEADER,
        MODEL_NOT_FOUND,
        UNKNOWN_URL,
        METHOD_NOT_ALLOWED,
        SHUTTING_DOWN,
        INTERNAL,
        *(code.name.lower() for code in grpc.StatusCode),
    }
)


@dataclass(frozen=True)
class _Mapping:
    status: int
    type: str
    # Used when the status is not the service's own (no trustworthy message).
    fallback_message: str
    # False: send `x-should-retry: false`, because the OpenAI SDKs otherwise
    # retry every 409 and 5xx, and these cannot succeed on a retry.
    retry: bool = True


_BY_CODE: dict[grpc.StatusCode, _Mapping] = {
    grpc.StatusCode.INVALID_ARGUMENT: _Mapping(400, INVALID_REQUEST, "Invalid request."),
    grpc.StatusCode.OUT_OF_RANGE: _Mapping(400, INVALID_REQUEST, "Invalid request."),
    # The service raises FAILED_PRECONDITION only for its own deployment's
    # state (a backend without credentials, storage refusing our keys):
    # nothing the caller can fix, so a 503 rather than OpenAI's 400.
    grpc.StatusCode.FAILED_PRECONDITION: _Mapping(
        503, SERVER, "The service cannot serve this request right now.", retry=False
    ),
    grpc.StatusCode.UNAUTHENTICATED: _Mapping(401, AUTHENTICATION, "Authentication failed."),
    grpc.StatusCode.PERMISSION_DENIED: _Mapping(403, PERMISSION, "Permission denied."),
    grpc.StatusCode.NOT_FOUND: _Mapping(404, INVALID_REQUEST, "Not found."),
    grpc.StatusCode.ALREADY_EXISTS: _Mapping(409, INVALID_REQUEST, "Conflict.", retry=False),
    grpc.StatusCode.ABORTED: _Mapping(409, INVALID_REQUEST, "Conflict; retry the request."),
    grpc.StatusCode.RESOURCE_EXHAUSTED: _Mapping(
        429, RATE_LIMIT, "Rate limit reached; retry later."
    ),
    grpc.StatusCode.CANCELLED: _Mapping(499, SERVER, "The request was cancelled."),
    grpc.StatusCode.UNKNOWN: _Mapping(500, SERVER, "Internal error."),
    grpc.StatusCode.INTERNAL: _Mapping(500, SERVER, "Internal error."),
    grpc.StatusCode.DATA_LOSS: _Mapping(500, SERVER, "Internal error."),
    grpc.StatusCode.UNIMPLEMENTED: _Mapping(501, SERVER, "Not implemented.", retry=False),
    # Without the service's ErrorInfo this is the sidecar failing to reach
    # the gRPC service at all: the service is unavailable.
    grpc.StatusCode.UNAVAILABLE: _Mapping(503, SERVER, "The image service is unavailable."),
    grpc.StatusCode.DEADLINE_EXCEEDED: _Mapping(504, SERVER, "The request timed out."),
}

# Where one gRPC code covers both "your request" and "our side" faults, the
# reason decides. Keys are ErrorInfo reasons of the service's own statuses.
_REASON_OVERRIDES: dict[str, _Mapping] = {
    # The provider refused *our* credentials: a bad gateway, not the caller's fault.
    "UPSTREAM_AUTH_FAILED": _Mapping(502, SERVER, "", retry=False),
    # The provider failed (5xx, connection): bad gateway.
    "UPSTREAM_UNAVAILABLE": _Mapping(502, SERVER, ""),
    "CONTENT_POLICY_VIOLATION": _Mapping(400, MODERATION, ""),
    # The deployment refuses a retired model: the caller names its successor.
    "MODEL_RETIRED": _Mapping(400, INVALID_REQUEST, "", retry=False),
    # The key's daily images or monthly budget are spent: OpenAI's own
    # insufficient_quota 429, which its SDKs must not retry.
    "INSUFFICIENT_QUOTA": _Mapping(429, INSUFFICIENT_QUOTA, "", retry=False),
}

_CODE_OVERRIDES = {"CONTENT_POLICY_VIOLATION": "moderation_blocked"}

# How grpc-core words RESOURCE_EXHAUSTED for a message over
# `grpc.max_*_message_length` and for call metadata over
# `grpc.max_metadata_size` -> the HTTP status, message and code they mean.
_GRPC_SIZE_LIMITS = {
    "message larger than max": (
        413,
        "The request is too large for the image service.",
        REQUEST_TOO_LARGE,
    ),
    "metadata size exceeds": (
        431,
        "The request headers are too large for the image service.",
        HEADER_TOO_LARGE,
    ),
}

# Proto field name -> OpenAI parameter name (see `public_param`).
_PARAM_NAMES = {"images": "image", "request_id": "Idempotency-Key"}
_INDEXED = re.compile(r"^(?P<name>[a-z_]+)\[(?P<index>\d+)\](?P<rest>.*)$")


class RestError(Exception):
    """An error response in the OpenAI shape, raised anywhere in a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str = INVALID_ARGUMENT,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        # None only for a service status whose ErrorInfo has no reason.
        self.code: str | None = code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, object]:
        """The JSON body: `{"error": {"message", "type", "param", "code"}}`."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: Mapping[str, str] | None = None) -> Response:
        return Response(
            json.dumps(self.body(), separators=(",", ":")).encode(),
            status_code=self.status,
            media_type="application/json",
            headers={**self.headers, **(headers or {})},
        )


@dataclass
class StatusDetails:
    """The google.rpc details of a failed call that the REST edge uses."""

    reason: str = ""
    domain: str = ""
    violations: list[tuple[str, str]] = field(default_factory=list)
    retry_after_s: float | None = None


def parse_details(trailing_metadata: TrailingMetadata) -> StatusDetails:
    """Decode `grpc-status-details-bin` from a call's trailing metadata.

    Undecodable details are ignored: the code alone still maps to a status.
    """
    details = StatusDetails()
    raw = _details_bytes(trailing_metadata)
    if raw is None:
        return details
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except Exception:  # a DecodeError, or anything a broken proxy produces
        return details
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            details.reason, details.domain = info.reason, info.domain
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            details.violations.extend((v.field, v.description) for v in bad.field_violations)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            delay = retry.retry_delay
            details.retry_after_s = max(0.0, delay.seconds + delay.nanos / 1e9)
    return details


def _details_bytes(trailing_metadata: TrailingMetadata) -> bytes | None:
    for key, value in trailing_metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def public_param(proto_field: str) -> str:
    """The OpenAI parameter a proto field path refers to.

    `images` and `images[0]` are the edit's `image`; later inputs keep their
    index (`images[2]` -> `image[2]`, the multipart name that sends them).
    """
    match = _INDEXED.match(proto_field)
    if match:
        name = _PARAM_NAMES.get(match["name"], match["name"])
        index = int(match["index"])
        if name == "image" and index == 0 and not match["rest"]:
            return name
        return f"{name}[{index}]{match['rest']}"
    return _PARAM_NAMES.get(proto_field, proto_field)


def public_code(reason: str) -> str | None:
    """The OpenAI `code` for an `ErrorInfo.reason` (None when there is none)."""
    if not reason:
        return None
    return _CODE_OVERRIDES.get(reason, reason.lower())


def from_rpc_error(error: grpc.aio.AioRpcError) -> RestError:
    """Map a failed upstream call onto the OpenAI error it should look like."""
    return from_status(error.code(), error.details() or "", error.trailing_metadata())


def from_status(
    code: grpc.StatusCode, message: str, trailing_metadata: TrailingMetadata
) -> RestError:
    """Map a gRPC code, its message and trailing metadata (see module doc)."""
    details = parse_details(trailing_metadata)
    ours = details.domain == SERVICE_ERROR_DOMAIN
    mapping = _BY_CODE.get(code, _BY_CODE[grpc.StatusCode.UNKNOWN])
    if ours and details.reason in _REASON_OVERRIDES:
        override = _REASON_OVERRIDES[details.reason]
        mapping = _Mapping(override.status, override.type, mapping.fallback_message, override.retry)
    elif not ours and code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        for marker, (status, text, size_code) in _GRPC_SIZE_LIMITS.items():
            if marker in message:
                # gRPC's own size limits, not a quota: retrying cannot help.
                return RestError(status, text, code=size_code, headers={"x-should-retry": "false"})
    headers: dict[str, str] = {} if mapping.retry else {"x-should-retry": "false"}
    retry_after = details.retry_after_s
    if retry_after is None and mapping.status == 429:
        retry_after = DEFAULT_RETRY_AFTER_S
    if retry_after is not None:
        headers["Retry-After"] = str(math.ceil(retry_after))
        headers["retry-after-ms"] = str(math.ceil(retry_after * 1000))
    error = RestError(
        mapping.status,
        message if ours and message else mapping.fallback_message,
        type=mapping.type,
        param=public_param(details.violations[0][0]) if details.violations else None,
        code=code.name.lower(),
        headers=headers,
    )
    if ours:
        error.code = public_code(details.reason)
    return error
