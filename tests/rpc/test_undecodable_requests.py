"""A request body that is not the method's message: INVALID_ARGUMENT with
the service's details, and no Python exception class in the message."""

from __future__ import annotations

import random

import grpc
import pytest

from tests.rpc.conftest import Stack, details_of

SERVICE = "/chuizi.image.v1.ImageService/"
_BODIES = [
    random.Random(11).randbytes(64),
    b"\xff" * 10,
    b"\x0a\x05\xff\xfe\xfd\xfc\xfb",  # field 1 (model): invalid UTF-8
]


@pytest.mark.parametrize("body", _BODIES, ids=["random", "ff", "bad-utf8"])
@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("Generate", "GenerateRequest"),
        ("StreamGenerate", "GenerateRequest"),
        ("Edit", "EditRequest"),
        ("StreamEdit", "EditRequest"),
        ("GetGeneration", "GetGenerationRequest"),
    ],
)
async def test_undecodable_bodies_are_invalid_argument(
    stack: Stack, method: str, message: str, body: bytes
) -> None:
    if method.startswith("Stream"):
        stream = stack.channel.unary_stream(SERVICE + method)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream(body, timeout=10):
                pass
    else:
        unary = stack.channel.unary_unary(SERVICE + method)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(body, timeout=10)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.message == f"The request body is not a valid chuizi.image.v1.{message} message."
    assert "<class" not in details.message and "Error" not in details.message
    assert details.reason == "INVALID_ARGUMENT"
    assert [field for field, _ in details.violations] == ["request"]


async def test_health_checks_with_garbage_are_refused_the_same_way(stack: Stack) -> None:
    check = stack.channel.unary_unary("/grpc.health.v1.Health/Check")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(b"\xff" * 10, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
