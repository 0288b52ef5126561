"""bailian/wan2.7-image and -pro end to end: gRPC service -> BailianWanBackend ->
the DashScope emulator (task submission, polling, result download), over real
sockets."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from typing import Any

import grpc
import httpx
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.sandbox.bailian_wan import CANCELED, PARTIAL, BailianWanEmulator
from server.sandbox.faults import FaultMode
from server.sandbox.render import render_png
from server.sandbox.server import SandboxServer
from tests.rpc.conftest import ErrorDetails, Stack, details_of
from tests.rpc.stacks import running_stack
from tests.support.images import size_of

WAN = "bailian/wan2.7-image"
WAN_PRO = "bailian/wan2.7-image-pro"
PRICES = {WAN: Decimal("0.03"), WAN_PRO: Decimal("0.075")}
FAST_POLLING = {"bailian_poll_initial_s": 0.01, "bailian_poll_max_s": 0.05}


def wan_running_stack(
    sandbox: SandboxServer, tmp_path: pathlib.Path, **changes: Any
) -> AbstractAsyncContextManager[Stack]:
    """The service over the sandbox, with fast Wan polling and `changes`."""
    return running_stack(sandbox, tmp_path, **{**FAST_POLLING, **changes})


@pytest.fixture
async def wan_stack(sandbox: SandboxServer, tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    async with wan_running_stack(sandbox, tmp_path) as stack:
        yield stack


def emulator_of(stack: Stack) -> BailianWanEmulator:
    return stack.sandbox.bailian_wan


async def failure(stack: Stack, rpc_timeout: float = 30, **fields: Any) -> ErrorDetails:
    request = pb.GenerateRequest(**{"model": WAN, "prompt": "a fox", **fields})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Generate(request, timeout=rpc_timeout)
    return details_of(caught.value)


@pytest.mark.parametrize("model", [WAN, WAN_PRO])
@pytest.mark.parametrize("n", [1, 4])
async def test_n_images_come_from_one_task(wan_stack: Stack, model: str, n: int) -> None:
    generation = await wan_stack.stub.Generate(
        pb.GenerateRequest(model=model, prompt="a red fox", n=n, seed=11), timeout=30
    )

    assert sorted(image.index for image in generation.images) == list(range(n))
    assert Decimal(generation.cost) == PRICES[model] * n
    emulator = emulator_of(wan_stack)
    # Native batching: one task (one submission) for all n images.
    assert (emulator.stats.submits, emulator.faults.stats.received) == (1, 1)
    body = emulator.received[-1].body
    assert (body["model"], body["parameters"]["n"]) == (model.split("/")[1], n)
    assert emulator.stats.downloads == n
    async with httpx.AsyncClient() as http:
        for image in generation.images:
            assert image.stored and image.url.startswith(wan_stack.media.base_url)
            # Stored by the service: the bytes no longer depend on DashScope's URL.
            stored = await http.get(image.url)
            assert size_of(stored.content) == (image.width, image.height) == (1024, 1024)


@pytest.mark.parametrize("model", [WAN, WAN_PRO])
@pytest.mark.parametrize(
    ("size", "produced"),
    [("1024x1024", (1024, 1024)), ("1792x1024", (1344, 768)), ("1024x1792", (768, 1344))],
)
async def test_each_offered_size_reports_the_size_produced(
    wan_stack: Stack, model: str, size: str, produced: tuple[int, int]
) -> None:
    generation = await wan_stack.stub.Generate(
        pb.GenerateRequest(
            model=model, prompt="a fox", size=size, response_format=pb.RESPONSE_FORMAT_INLINE
        ),
        timeout=30,
    )
    (image,) = generation.images
    assert (image.width, image.height) == produced == size_of(image.data)
    assert generation.size == size
    assert emulator_of(wan_stack).received[-1].body["parameters"]["size"] == "{}*{}".format(
        *produced
    )


async def test_list_models_shows_wan_configured(wan_stack: Stack) -> None:
    models = {m.name: m for m in (await wan_stack.stub.ListModels(pb.ListModelsRequest())).models}
    for name in (WAN, WAN_PRO):
        model = models[name]
        assert model.configured
        assert list(model.sizes) == ["1024x1024", "1792x1024", "1024x1792"]
        assert (model.max_size, model.images_per_call) == ("1024x1024", 4)
        assert set(model.operations) == {pb.OPERATION_GENERATE, pb.OPERATION_PROMPT_EDIT}


@pytest.mark.parametrize("model", [WAN, WAN_PRO])
async def test_prompt_edit(wan_stack: Stack, model: str) -> None:
    source = render_png(800, 600, "the source")
    generation = await wan_stack.stub.Edit(
        pb.EditRequest(model=model, prompt="make it night", images=[source], n=2), timeout=30
    )
    assert len(generation.images) == 2
    for image in generation.images:
        assert image.width / image.height == pytest.approx(800 / 600, rel=0.03)
    content = emulator_of(wan_stack).received[-1].body["input"]["messages"][0]["content"]
    assert content[0] == {"text": "make it night"}
    assert content[1]["image"].startswith("data:image/png;base64,")
    assert emulator_of(wan_stack).stats.submits == 1


async def test_a_task_that_never_finishes_is_deadline_exceeded(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    # The service's own deadline passes first, so the caller gets the reason.
    async with wan_running_stack(sandbox, tmp_path, default_deadline_s=0.5) as stack:
        emulator_of(stack).faults.push(FaultMode.TIMEOUT)
        details = await failure(stack, rpc_timeout=10)
        assert (details.code, details.reason) == (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "UPSTREAM_TIMEOUT",
        )
        polls = emulator_of(stack).stats.total_polls
        await asyncio.sleep(0.3)
        assert emulator_of(stack).stats.total_polls == polls


async def test_one_dropped_connection_is_retried(wan_stack: Stack) -> None:
    emulator_of(wan_stack).faults.push(FaultMode.DROP_CONNECTION)
    generation = await wan_stack.stub.Generate(
        pb.GenerateRequest(model=WAN, prompt="a fox"), timeout=30
    )
    assert len(generation.images) == 1
    assert emulator_of(wan_stack).faults.stats.dropped == 1


async def test_a_partial_filter_returns_the_rest_and_says_so(wan_stack: Stack) -> None:
    emulator_of(wan_stack).faults.push(FaultMode.CONTENT_FILTER, variant=PARTIAL)
    generation = await wan_stack.stub.Generate(
        pb.GenerateRequest(model=WAN_PRO, prompt="four foxes", n=4), timeout=30
    )
    assert len(generation.images) == 3
    assert generation.filtered_count == 1
    assert Decimal(generation.cost) == PRICES[WAN_PRO] * 3  # charged for what was produced
    (missing,) = generation.failures
    assert (missing.image_count, missing.reason) == (1, "CONTENT_POLICY_VIOLATION")


async def test_cancelling_the_rpc_stops_polling_and_cancels_the_task(wan_stack: Stack) -> None:
    emulator = emulator_of(wan_stack)
    emulator.faults.latencies = [30.0]
    call = wan_stack.stub.Generate(pb.GenerateRequest(model=WAN, prompt="a slow fox", n=4))
    await emulator.faults.wait_for(lambda _: emulator.stats.total_polls >= 3)

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    (task_id,) = emulator.tasks
    await emulator.faults.wait_for(lambda _: emulator.stats.cancels[task_id] == 1)
    polls = emulator.stats.polls[task_id]
    await asyncio.sleep(0.5)
    assert emulator.stats.polls[task_id] == polls
    assert emulator.task_status(task_id) == CANCELED
    assert emulator.stats.downloads == 0


async def test_missing_key_is_failed_precondition_naming_the_setting(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    async with wan_running_stack(sandbox, tmp_path, bailian_api_key=None) as stack:
        models = {m.name: m for m in (await stack.stub.ListModels(pb.ListModelsRequest())).models}
        assert not models[WAN].configured and not models[WAN_PRO].configured
        for model in (WAN, WAN_PRO):
            details = await failure(stack, model=model)
            assert (details.code, details.reason) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "BACKEND_NOT_CONFIGURED",
            )
            assert details.metadata["setting"] == "IMAGE_SERVICE_BAILIAN_API_KEY"
            assert details.metadata["backend"] == "bailian_wan"
            assert "IMAGE_SERVICE_BAILIAN_API_KEY" in details.message
        assert emulator_of(stack).faults.stats.received == 0


async def test_wrong_key_is_failed_precondition_without_the_key(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    async with wan_running_stack(sandbox, tmp_path, bailian_api_key="sk-wrong-key") as stack:
        details = await failure(stack)
        assert (details.code, details.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "UPSTREAM_AUTH_FAILED",
        )
        assert "sk-wrong-key" not in details.message
        assert "sk-wrong-key" not in str(details.metadata)
