"""Statuses that quote a long input still fit the client's metadata limit.

A 4,001-character model name or size was quoted whole in the message and
the field violation; with the details trailer that passed gRPC's 8 KiB
metadata limit, and the caller got RESOURCE_EXHAUSTED (retryable, no
details) instead of NOT_FOUND / INVALID_ARGUMENT. Found by the gRPC fuzzer.
"""

from __future__ import annotations

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from tests.rpc.conftest import Stack, details_of

LONG = "x" * 4001


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"model": LONG}, grpc.StatusCode.NOT_FOUND, None),
        ({"size": LONG}, grpc.StatusCode.INVALID_ARGUMENT, "size"),
        (
            {"size": LONG, "prompt": LONG, "request_id": LONG},
            grpc.StatusCode.INVALID_ARGUMENT,
            "size",
        ),
    ],
    ids=["model", "size", "several"],
)
async def test_long_inputs_get_their_own_status_with_details(
    stack: Stack, changes: dict[str, str], code: grpc.StatusCode, field: str | None
) -> None:
    request = pb.GenerateRequest(
        **{"model": "azure/flux-kontext-pro", "prompt": "a fox", **changes}
    )
    # Repeated: gRPC's soft limit refuses oversized metadata at random.
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.Generate(request, timeout=10)
        details = details_of(caught.value)
        assert details.code == code
        assert len(details.message) <= 512
        if field is not None:
            assert field in [name for name, _ in details.violations]
