"""The refusals of API keys in the error table: codes and details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from server.domain import errors
from server.rpc.status import to_status


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidApiKey("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.ModelNotAllowed("x"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.KeyRateLimited("x", retry_after=3), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.QuotaExceeded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.RequestInProgress("x", retry_after=2), grpc.StatusCode.ABORTED),
        (errors.AuthUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_codes(error: errors.ImageServiceError, code: grpc.StatusCode) -> None:
    assert to_status(error).code is code


def test_a_spent_quota_carries_quota_failure_and_retry_info() -> None:
    status = to_status(
        errors.QuotaExceeded(
            "spent", subject="key:key_0123456789ab", description="images_per_day 5", retry_after=90
        )
    )
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    kinds = {d.type_url.rsplit("/", 1)[-1]: d for d in status_pb2.Status.FromString(raw).details}
    quota = error_details_pb2.QuotaFailure()
    kinds["google.rpc.QuotaFailure"].Unpack(quota)
    assert [(v.subject, v.description) for v in quota.violations] == [
        ("key:key_0123456789ab", "images_per_day 5")
    ]
    retry = error_details_pb2.RetryInfo()
    kinds["google.rpc.RetryInfo"].Unpack(retry)
    assert retry.retry_delay.seconds == 90
