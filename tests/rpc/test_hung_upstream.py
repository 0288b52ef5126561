"""A hung upstream, through the whole service: the server answers before the
caller's deadline, with whatever the other calls produced.

Every backend's emulated `timeout` fault (a request that never answers) is
DEADLINE_EXCEEDED / UPSTREAM_TIMEOUT from the service itself (Vertex's was
UNAVAILABLE). With n=4 on FLUX and one of the four calls hung, the
generation keeps three images, a failure entry for the hung call, and its
record (before, unary lost all three and a stream ended without a record).
"""

from __future__ import annotations

import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.sandbox.faults import FaultMode
from tests.rpc.conftest import Stack
from tests.rpc.test_models_fault_modes import MODELS, TIMED_OUT, Model

# Short, but long enough for the calls that do answer on a busy machine.
RPC_TIMEOUT_S = 6.0


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.backend)
async def test_a_hung_upstream_is_the_services_own_deadline_exceeded(
    stack: Stack, model: Model
) -> None:
    model.faults(stack).push(FaultMode.TIMEOUT, times=10)
    # details_of needs the service's status details: the answer came from
    # the server before the deadline, not from the client giving up.
    details = await model.failure(stack, rpc_timeout=RPC_TIMEOUT_S)
    assert (details.code.name, details.reason) == TIMED_OUT
    assert "sandbox" not in details.message.lower()


def _hang_one_call(stack: Stack) -> None:
    faults = stack.sandbox.azure_flux.faults
    faults.push(FaultMode.TIMEOUT)  # the first of the four calls to arrive


def _failures(generation: pb.Generation) -> list[tuple[int, str]]:
    return [(f.image_count, f.reason) for f in generation.failures]


async def test_unary_keeps_the_three_images_and_stores_the_record(stack: Stack) -> None:
    _hang_one_call(stack)
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model="azure/flux-kontext-pro", prompt="a fox", n=4),
        timeout=RPC_TIMEOUT_S,
    )
    assert len(generation.images) == 3
    assert _failures(generation) == [(1, "UPSTREAM_TIMEOUT")]
    stored = await stack.stub.GetGeneration(
        pb.GetGenerationRequest(generation_id=generation.generation_id), timeout=10
    )
    assert (len(stored.images), _failures(stored)) == (3, [(1, "UPSTREAM_TIMEOUT")])


async def test_stream_sends_the_three_images_then_the_record(stack: Stack) -> None:
    _hang_one_call(stack)
    kinds = [
        message.WhichOneof("event")
        async for message in stack.stub.StreamGenerate(
            pb.GenerateRequest(model="azure/flux-kontext-pro", prompt="a fox", n=4),
            timeout=RPC_TIMEOUT_S,
        )
    ]
    assert kinds == ["image", "image", "image", "generation"]
