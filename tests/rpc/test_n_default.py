"""gRPC `n`: the proto says "Zero means 1" (proto3 cannot tell 0 from unset),
so 0 is the default and the record says 1; a negative count is refused."""

from __future__ import annotations

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from tests.rpc.conftest import Stack, details_of


async def test_n_zero_means_one_image_and_the_record_says_so(stack: Stack) -> None:
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model="azure/flux-kontext-pro", prompt="a fox", n=0), timeout=30
    )
    assert (len(generation.images), generation.n) == (1, 1)


async def test_negative_n_is_invalid_argument_naming_n(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Generate(
            pb.GenerateRequest(model="azure/flux-kontext-pro", prompt="a fox", n=-1), timeout=30
        )
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in details.violations] == ["n"]
