"""The Stability Image Services edits end to end: gRPC `Edit` → orchestrator →
BedrockStabilityBackend (boto3) → the Bedrock emulator, over real sockets.
Each operation's parameters travel as `EditRequest` fields; a missing or
misplaced one is INVALID_ARGUMENT naming it, before any upstream call."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.domain.catalogue import Catalogue
from tests.rpc.conftest import Stack, details_of
from tests.support.image_services import CASES, MASK, SOURCE, ServiceCase, wire_options

CATALOGUE = Catalogue.load()


def edit_request(case: ServiceCase, **changes: Any) -> pb.EditRequest:
    fields: dict[str, Any] = {
        "model": case.model,
        "prompt": case.prompt,
        "images": [SOURCE],
        "operation": pb.Operation.Value(f"OPERATION_{case.operation.name}"),
        "size": str(case.size) if case.size else "",
        **wire_options(case),
    }
    if case.masked:
        fields["mask"] = MASK
    fields.update(changes)
    return pb.EditRequest(**fields)


def received(stack: Stack) -> int:
    return stack.sandbox.bedrock_stability.faults.stats.received


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
async def test_each_service_edits_over_grpc(stack: Stack, case: ServiceCase) -> None:
    generation = await stack.stub.Edit(edit_request(case, seed=5), timeout=60)

    (image,) = generation.images
    assert (image.width, image.height) == case.produced
    assert image.stored and image.url
    assert generation.operation == pb.Operation.Value(f"OPERATION_{case.operation.name}")
    assert generation.cost == f"{CATALOGUE.get(case.model).price_per_image:.8f}"
    body = stack.sandbox.bedrock_stability.received[-1].body
    # Floats cross gRPC as 32-bit and come back as the number written.
    assert {key: body.get(key) for key in case.sends} == case.sends
    assert body["seed"] == 5
    assert received(stack) == 1


@pytest.mark.parametrize(
    ("case_id", "changes", "fields"),
    [
        ("search_replace", {"search_prompt": ""}, ["search_prompt"]),
        ("search_recolor", {"select_prompt": "", "prompt": ""}, ["prompt", "select_prompt"]),
        ("outpaint", {"left": 0, "up": 0, "fidelity": 0.5}, ["fidelity", "left"]),
        ("control_sketch", {"control_strength": 1.5}, ["control_strength"]),
        ("style_transfer", {"style_image": b""}, ["style_image"]),
        ("erase_object", {"mask": b""}, ["mask"]),
        ("creative_upscale", {"creativity": 0.9}, ["creativity"]),
    ],
)
async def test_bad_parameters_are_invalid_argument_naming_the_field(
    stack: Stack, case_id: str, changes: dict[str, Any], fields: list[str]
) -> None:
    case = next(c for c in CASES if c.id == case_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Edit(edit_request(case, **changes), timeout=30)

    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field for field, _ in details.violations) == fields
    assert received(stack) == 0


async def test_list_models_shows_each_new_operation(stack: Stack) -> None:
    response = await stack.stub.ListModels(pb.ListModelsRequest(), timeout=30)
    offered = {model.name: set(model.operations) for model in response.models}
    for case in CASES:
        assert pb.Operation.Value(f"OPERATION_{case.operation.name}") in offered[case.model]
