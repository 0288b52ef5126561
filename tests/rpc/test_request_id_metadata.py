"""Where a gRPC caller finds the request id: the trailers of every RPC,
failed ones included, and also the headers of a stream, before its first
message (`server/rpc/observing.py`)."""

from __future__ import annotations

import grpc
from chuizi.image.v1 import image_service_pb2 as pb

from tests.rpc.conftest import Stack, details_of

KONTEXT = "azure/flux-kontext-pro"


async def test_unary_answer_carries_the_callers_request_id_in_its_trailers(stack: Stack) -> None:
    call = stack.stub.Generate(
        pb.GenerateRequest(model=KONTEXT, prompt="a red fox"),
        metadata=(("x-request-id", "unary-caller-1"),),
        timeout=30,
    )
    generation = await call
    assert generation.generation_id.startswith("gen-")
    assert dict(await call.trailing_metadata())["x-request-id"] == "unary-caller-1"
    # Not sent on its own any more: the headers carry no request id.
    assert "x-request-id" not in dict(await call.initial_metadata())


async def test_unary_without_one_gets_a_made_up_request_id(stack: Stack) -> None:
    call = stack.stub.ListModels(pb.ListModelsRequest(), timeout=30)
    await call
    assert dict(await call.trailing_metadata())["x-request-id"].startswith("req-")


async def test_failed_rpc_keeps_the_request_id_beside_its_status_details(stack: Stack) -> None:
    call = stack.stub.Generate(
        pb.GenerateRequest(model="no/such-model", prompt="x"),
        metadata=(("x-request-id", "failing-caller-2"),),
        timeout=30,
    )
    try:
        await call
    except grpc.aio.AioRpcError as error:
        trailers = dict(error.trailing_metadata() or ())
        assert trailers["x-request-id"] == "failing-caller-2"
        assert details_of(error).reason  # the error's own details are still there
    else:
        raise AssertionError("an unknown model was accepted")


async def test_stream_sends_the_request_id_in_its_headers_before_the_first_image(
    stack: Stack,
) -> None:
    call = stack.stub.StreamGenerate(
        pb.GenerateRequest(model=KONTEXT, prompt="a red fox", n=2),
        metadata=(("x-request-id", "stream-caller-3"),),
        timeout=30,
    )
    headers = dict(await call.initial_metadata())
    assert headers["x-request-id"] == "stream-caller-3"
    messages = [message async for message in call]
    assert sum(m.HasField("image") for m in messages) == 2
    assert dict(await call.trailing_metadata())["x-request-id"] == "stream-caller-3"
