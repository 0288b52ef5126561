"""Every domain error class maps to a gRPC code with the right details, and
the servicer's `StatusOnError` aborts calls with exactly that status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from server.domain import errors
from server.rpc.servicer import StatusOnError
from server.rpc.status import ERROR_DOMAIN, ERROR_TABLE, INTERNAL_MESSAGE, to_status


def _all_error_classes() -> list[type[errors.ImageServiceError]]:
    found: list[type[errors.ImageServiceError]] = []
    pending: list[type[errors.ImageServiceError]] = [errors.ImageServiceError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _make(cls: type[errors.ImageServiceError]) -> errors.ImageServiceError:
    if issubclass(cls, errors.InvalidArgument):
        return cls([errors.FieldViolation("size", "bad")])
    return cls("message", metadata={"model": "m"})


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
def test_every_domain_error_has_a_row(cls: type[errors.ImageServiceError]) -> None:
    assert any(cls is row or issubclass(cls, row) for row, _ in ERROR_TABLE)
    status = to_status(_make(cls))
    detail = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert detail.details[0].Unpack(info)
    assert (info.reason, info.domain) == (cls.reason, ERROR_DOMAIN)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            errors.CapabilityNotSupported([errors.FieldViolation("operation", "x")]),
            "INVALID_ARGUMENT",
        ),
        (errors.ContentRejected("x"), "INVALID_ARGUMENT"),
        (errors.ModelNotFound("x"), "NOT_FOUND"),
        (errors.BackendNotConfigured("x"), "FAILED_PRECONDITION"),
        (errors.RateLimited("x"), "RESOURCE_EXHAUSTED"),
        (errors.UpstreamUnavailable("x"), "UNAVAILABLE"),
        (errors.UpstreamTimeout("x"), "DEADLINE_EXCEEDED"),
        (errors.RequestIdConflict("x"), "ALREADY_EXISTS"),
        (errors.ImageServiceError("x"), "INTERNAL"),
    ],
)
def test_codes(error: errors.ImageServiceError, code: str) -> None:
    assert to_status(error).code is getattr(grpc.StatusCode, code)


def test_bad_request_and_retry_info_details() -> None:
    status = to_status(errors.InvalidArgument([errors.FieldViolation("n", "too many")]))
    detail = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    bad = error_details_pb2.BadRequest()
    assert detail.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [("n", "too many")]

    status = to_status(errors.RateLimited("slow", retry_after=2.5))
    detail = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert detail.details[1].Unpack(retry)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (2, 500_000_000)


class _AbortRecorder:
    """Records `abort` and raises like a real servicer context does."""

    def __init__(self) -> None:
        self.aborted: list[tuple[grpc.StatusCode, str, object]] = []

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: object) -> None:
        self.aborted.append((code, details, trailing_metadata))
        raise grpc.aio.AbortError()

    def trailing_metadata(self) -> tuple[()]:
        return ()  # nothing set before the abort


def _context(recorder: _AbortRecorder) -> grpc.aio.ServicerContext[object, object]:
    return cast("grpc.aio.ServicerContext[object, object]", recorder)


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
async def test_status_on_error_aborts_with_the_table_status(
    cls: type[errors.ImageServiceError],
) -> None:
    error = _make(cls)
    recorder = _AbortRecorder()
    with pytest.raises(grpc.aio.AbortError):
        async with StatusOnError(_context(recorder)):
            raise error
    expected = to_status(error)
    assert recorder.aborted == [(expected.code, error.message, expected.trailing_metadata)]


async def test_status_on_error_hides_unexpected_errors_behind_internal() -> None:
    recorder = _AbortRecorder()
    with pytest.raises(grpc.aio.AbortError):
        async with StatusOnError(_context(recorder)):
            raise RuntimeError("upstream said: key sk-secret is invalid")
    [(code, message, trailing)] = recorder.aborted
    assert (code, message) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    assert "sk-secret" not in repr(trailing)


async def test_status_on_error_leaves_success_and_cancellation_alone() -> None:
    recorder = _AbortRecorder()
    async with StatusOnError(_context(recorder)):
        pass
    with pytest.raises(asyncio.CancelledError):
        async with StatusOnError(_context(recorder)):
            raise asyncio.CancelledError
    assert recorder.aborted == []


async def test_status_on_error_maps_an_error_raised_after_a_stream_yielded() -> None:
    recorder = _AbortRecorder()

    async def stream() -> AsyncIterator[int]:
        async with StatusOnError(_context(recorder)):
            yield 1
            raise errors.UpstreamTimeout("too slow")

    received = []
    with pytest.raises(grpc.aio.AbortError):
        async for item in stream():
            received.append(item)
    assert received == [1]
    assert [code for code, _, _ in recorder.aborted] == [grpc.StatusCode.DEADLINE_EXCEEDED]
