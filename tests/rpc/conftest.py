"""A real gRPC service on port 0, its media server and the session's sandbox
emulators (the root conftest's `sandbox`)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from server.sandbox.server import SandboxServer
from tests.rpc.stacks import Stack, running_stack


@pytest.fixture
async def stack(sandbox: SandboxServer, tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    async with running_stack(sandbox, tmp_path) as running:
        yield running


@dataclass
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    violations: list[tuple[str, str]]
    retry_delay_s: float | None


def details_of(error: grpc.aio.AioRpcError) -> ErrorDetails:
    """The google.rpc.Status details the server attached to `error`."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, f"no status details on {error.code()}: {error.details()}"
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    retry = error_details_pb2.RetryInfo()
    found_retry = False
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
        elif detail.Is(retry.DESCRIPTOR):
            detail.Unpack(retry)
            found_retry = True
    return ErrorDetails(
        code=error.code(),
        message=error.details() or "",
        reason=info.reason,
        metadata=dict(info.metadata),
        violations=[(v.field, v.description) for v in bad.field_violations],
        retry_delay_s=(
            retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9 if found_retry else None
        ),
    )
