"""The error table: domain error -> gRPC code + google.rpc.Status details.

One table, one place. Every status carries an `ErrorInfo` (stable reason,
domain, metadata); invalid input adds `BadRequest` field violations; an
upstream that said when to retry (or a spent rate limit or quota) adds
`RetryInfo`; a spent quota adds `QuotaFailure`. Messages are the domain
errors' short, safe messages; unexpected exceptions become INTERNAL with a
fixed message (details go to the log only).
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.domain import errors

ERROR_DOMAIN = "image.chuizi.ai"

# Most specific classes first: the first isinstance match wins.
ERROR_TABLE: tuple[tuple[type[errors.ImageServiceError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ContentRejected, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.GenerationNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.RequestIdConflict, grpc.StatusCode.ALREADY_EXISTS),
    (errors.BackendNotConfigured, grpc.StatusCode.FAILED_PRECONDITION),
    # The caller can fix it: name the successor (in ErrorInfo.metadata).
    (errors.ModelRetired, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UpstreamAuthFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.UpstreamUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.StorageUnavailable, grpc.StatusCode.UNAVAILABLE),
    # The deployment's storage credentials or bucket are wrong.
    (errors.StorageRejected, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UpstreamTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.InvalidApiKey, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ModelNotAllowed, grpc.StatusCode.PERMISSION_DENIED),
    (errors.KeyRateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.RequestInProgress, grpc.StatusCode.ABORTED),
    # Fail closed: without the key store no call is let through.
    (errors.AuthUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ImageServiceError, grpc.StatusCode.INTERNAL),
)

INTERNAL_MESSAGE = "Internal error."


def code_for(error: errors.ImageServiceError) -> grpc.StatusCode:
    for cls, code in ERROR_TABLE:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL  # pragma: no cover - the base class is in the table


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


# A status travels as trailing metadata (grpc-message, and the details
# base64-encoded), which clients refuse past 8 KiB, at random, and always past
# 16 KiB, as RESOURCE_EXHAUSTED: a retryable code in place of the real one.
# Messages that quote the caller's input (a 4,000-character model name) are
# clipped so that any status fits.
_MAX_MESSAGE_CHARS = 512
_MAX_DESCRIPTION_CHARS = 256
_MAX_METADATA_CHARS = 128
_MAX_VIOLATIONS = 8


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_status(error: errors.ImageServiceError) -> grpc.Status:
    """The `grpc.Status` (code, message, details trailer) for `error`."""
    code = code_for(error)
    metadata = {key: _clip(value, _MAX_METADATA_CHARS) for key, value in error.metadata.items()}
    details = [
        _pack(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
        )
    ]
    if isinstance(error, errors.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=_clip(v.field, _MAX_METADATA_CHARS),
                            description=_clip(v.description, _MAX_DESCRIPTION_CHARS),
                        )
                        for v in error.violations[:_MAX_VIOLATIONS]
                    ]
                )
            )
        )
    if isinstance(error, errors.QuotaExceeded) and error.subject:
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=error.subject, description=error.description
                        )
                    ]
                )
            )
        )
    if error.retry_after is not None:
        seconds = max(0.0, error.retry_after)
        delay = duration_pb2.Duration(
            seconds=math.floor(seconds), nanos=int((seconds % 1) * 1_000_000_000)
        )
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name),
        message=_clip(error.message, _MAX_MESSAGE_CHARS),
        details=details,
    )
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    return to_status(errors.ImageServiceError(INTERNAL_MESSAGE))


async def abort(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> NoReturn:
    """Abort the call with `status`, keeping the trailers already set.

    grpc replaces the call's trailing metadata with the abort's and sends
    the status at once; the request id the observing interceptor put in the
    trailers (`server/rpc/observing.py`) must go out beside the details.
    """
    kept = tuple(context.trailing_metadata() or ())
    await context.abort(status.code, status.details, (*kept, *status.trailing_metadata))
    raise AssertionError("unreachable: abort raises")  # for the type checker
