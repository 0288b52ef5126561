"""The REST error table, fed with the statuses the service really sends."""

from __future__ import annotations

import grpc
import pytest

from server.domain import errors
from server.rest.errors import from_status, parse_details, public_code, public_param
from server.rpc.status import to_status


def _map(error: errors.ImageServiceError) -> tuple[int, str, str | None, str | None]:
    status = to_status(error)
    rest = from_status(status.code, status.details, status.trailing_metadata)
    assert rest.message == error.message
    return rest.status, rest.type, rest.param, rest.code


def _violation(field: str) -> errors.InvalidArgument:
    return errors.InvalidArgument([errors.FieldViolation(field, "is bad")])


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_violation("size"), (400, "invalid_request_error", "size", "invalid_argument")),
        (_violation("images[0]"), (400, "invalid_request_error", "image", "invalid_argument")),
        (
            errors.CapabilityNotSupported([errors.FieldViolation("operation", "cannot inpaint")]),
            (400, "invalid_request_error", "operation", "capability_not_supported"),
        ),
        (
            errors.UpstreamRejected([errors.FieldViolation("size", "refused")]),
            (400, "invalid_request_error", "size", "upstream_invalid_request"),
        ),
        (
            errors.ContentRejected("Rejected by the safety system."),
            (400, "image_generation_user_error", None, "moderation_blocked"),
        ),
        (errors.ModelNotFound("x"), (404, "invalid_request_error", None, "model_not_found")),
        (
            errors.GenerationNotFound("x"),
            (404, "invalid_request_error", None, "generation_not_found"),
        ),
        (
            errors.RequestIdConflict("x"),
            (409, "invalid_request_error", None, "request_id_conflict"),
        ),
        (errors.BackendNotConfigured("x"), (503, "server_error", None, "backend_not_configured")),
        (errors.UpstreamAuthFailed("x"), (502, "server_error", None, "upstream_auth_failed")),
        (errors.RateLimited("x"), (429, "rate_limit_error", None, "upstream_rate_limited")),
        (errors.UpstreamUnavailable("x"), (502, "server_error", None, "upstream_unavailable")),
        (errors.StorageUnavailable("x"), (503, "server_error", None, "storage_unavailable")),
        (errors.UpstreamTimeout("x"), (504, "server_error", None, "upstream_timeout")),
        (errors.ImageServiceError("Internal error."), (500, "server_error", None, "internal")),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_every_service_error_maps(
    error: errors.ImageServiceError, expected: tuple[int, str, str | None, str | None]
) -> None:
    assert _map(error) == expected


def test_every_domain_error_class_gets_a_deliberate_status() -> None:
    # A new error class must not silently fall through to a 500.
    def subclasses(cls: type[errors.ImageServiceError]) -> list[type[errors.ImageServiceError]]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    for cls in subclasses(errors.ImageServiceError):
        if cls is errors.ImageServiceError:
            continue
        if issubclass(cls, errors.InvalidArgument):
            error: errors.ImageServiceError = cls([errors.FieldViolation("prompt", "bad")])
        else:
            error = cls("message")
        assert _map(error)[0] != 500, cls.__name__


def test_retry_info_becomes_retry_after() -> None:
    status = to_status(errors.RateLimited("Slow down.", retry_after=0.2))
    rest = from_status(status.code, status.details, status.trailing_metadata)
    assert rest.headers == {"Retry-After": "1", "retry-after-ms": "200"}


def test_a_429_without_retry_info_still_says_when_to_retry() -> None:
    rest = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", ())
    assert rest.status == 429
    assert rest.headers["Retry-After"] == "1"


def test_statuses_not_from_the_service_get_fixed_messages() -> None:
    rest = from_status(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses; last error: ipv4:10.1.2.3:50051",
        (),
    )
    assert (rest.status, rest.message, rest.code) == (
        503,
        "The image service is unavailable.",
        "unavailable",
    )


def test_grpc_header_limit_is_431_never_a_retryable_429() -> None:
    # What grpc-core answers when call metadata passes grpc.max_metadata_size.
    rest = from_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "received metadata size exceeds soft limit (12664 vs. 8192);  :path:65B",
        (),
    )
    assert (rest.status, rest.code) == (431, "request_header_too_large")
    assert rest.headers.get("x-should-retry") == "false"
    assert "Retry-After" not in rest.headers


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.CANCELLED, 499),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.FAILED_PRECONDITION, 503),
        (grpc.StatusCode.ABORTED, 409),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
    ],
)
def test_codes_without_details(code: grpc.StatusCode, status: int) -> None:
    assert from_status(code, "whatever", None).status == status


def test_undecodable_details_are_ignored() -> None:
    details = parse_details((("grpc-status-details-bin", b"\xff\xff\xff not a proto"),))
    assert (details.reason, details.violations, details.retry_after_s) == ("", [], None)


@pytest.mark.parametrize(
    ("proto_field", "param"),
    [
        ("images", "image"),
        ("images[0]", "image"),
        ("images[3]", "image[3]"),
        ("mask", "mask"),
        ("request_id", "Idempotency-Key"),
        ("n", "n"),
    ],
)
def test_public_param(proto_field: str, param: str) -> None:
    assert public_param(proto_field) == param


def test_public_code() -> None:
    assert public_code("") is None
    assert public_code("CONTENT_POLICY_VIOLATION") == "moderation_blocked"
    assert public_code("MODEL_NOT_FOUND") == "model_not_found"


def test_grpc_message_size_limits_are_413_not_429() -> None:
    rest = from_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Received message larger than max (70000000 vs. 67108864)",
        (),
    )
    assert (rest.status, rest.code) == (413, "request_too_large")
    assert "70000000" not in rest.message


@pytest.mark.parametrize(
    ("error", "should_retry"),
    [
        (errors.RequestIdConflict("x"), "false"),
        (errors.BackendNotConfigured("x"), "false"),
        (errors.UpstreamAuthFailed("x"), "false"),
        (errors.UpstreamUnavailable("x"), None),
        (errors.RateLimited("x"), None),
        (errors.ImageServiceError("x"), None),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_hopeless_failures_tell_sdks_not_to_retry(
    error: errors.ImageServiceError, should_retry: str | None
) -> None:
    status = to_status(error)
    rest = from_status(status.code, status.details, status.trailing_metadata)
    assert rest.headers.get("x-should-retry") == should_retry
