"""The Vertex Imagen emulator's wire behaviour, driven with the real
aiplatform_v1 async client over its own gRPC port (no backend code)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud.aiplatform_v1 import PredictionServiceAsyncClient
from google.cloud.aiplatform_v1.services.prediction_service.transports.grpc_asyncio import (
    PredictionServiceGrpcAsyncIOTransport,
)
from google.cloud.aiplatform_v1.types import prediction_service
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from PIL import Image

from server.sandbox.faults import FaultMode, FaultPlan
from server.sandbox.server import SandboxServer
from server.sandbox.vertex_imagen import (
    CONTENT_FILTER_ALL,
    CONTENT_FILTER_PARTIAL,
    CONTENT_FILTER_SILENT,
    PIXELS,
    RAI_FILTERED_REASON,
    SANDBOX_VERTEX_PROJECT,
    SERVER_ERROR_UNAVAILABLE,
)

STANDARD = "imagen-4.0-generate-001"
FAST = "imagen-4.0-fast-generate-001"


def model_path(model: str = STANDARD, project: str = SANDBOX_VERTEX_PROJECT) -> str:
    return f"projects/{project}/locations/us-central1/publishers/google/models/{model}"


@pytest.fixture
def faults(sandbox: SandboxServer) -> FaultPlan:
    return sandbox.vertex_imagen.faults


@pytest.fixture
async def client(sandbox: SandboxServer) -> AsyncIterator[PredictionServiceAsyncClient]:
    target = sandbox.vertex_imagen.endpoint.removeprefix("http://")
    channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)])
    transport = PredictionServiceGrpcAsyncIOTransport(host=target, channel=channel)
    yield PredictionServiceAsyncClient(transport=transport)
    await channel.close()


async def predict(
    client: PredictionServiceAsyncClient,
    parameters: dict[str, Any] | None = None,
    *,
    prompt: str = "a red fox",
    instances: list[Any] | None = None,
    endpoint: str | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout: float = 10,  # noqa: ASYNC109 - the client's own per-call timeout
) -> list[dict[str, Any]]:
    """Call Predict; the predictions as JSON."""
    raw = prediction_service.PredictRequest.pb()(
        endpoint=endpoint or model_path(),
        instances=[
            json_format.ParseDict(i, struct_pb2.Value()) for i in instances or [{"prompt": prompt}]
        ],
        parameters=json_format.ParseDict(
            {"sampleCount": 1} if parameters is None else parameters, struct_pb2.Value()
        ),
    )
    response = await client.predict(
        request=prediction_service.PredictRequest.wrap(raw),
        retry=None,
        timeout=timeout,
        metadata=metadata,
    )
    payload = json_format.MessageToDict(prediction_service.PredictResponse.pb(response))
    return list(payload.get("predictions", []))


def image_of(prediction: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(prediction["bytesBase64Encoded"])))


@pytest.mark.parametrize(("ratio", "tier"), sorted(PIXELS), ids=lambda v: str(v))
async def test_renders_imagens_pixel_table(
    client: PredictionServiceAsyncClient, ratio: str, tier: str
) -> None:
    [prediction] = await predict(
        client, {"sampleCount": 1, "aspectRatio": ratio, "sampleImageSize": tier.lower()}
    )
    image = image_of(prediction)
    assert (image.format, image.size) == ("PNG", PIXELS[(ratio, tier)])
    assert prediction["mimeType"] == "image/png"


async def test_sample_count_options_and_enhanced_prompt(
    client: PredictionServiceAsyncClient, sandbox: SandboxServer
) -> None:
    predictions = await predict(client, {"sampleCount": 3})
    assert len(predictions) == 3
    # enhancePrompt defaults to on: the rewritten prompt comes back.
    assert all(p["prompt"].startswith("a red fox") for p in predictions)

    jpeg = await predict(
        client,
        {
            "sampleCount": 1,
            "enhancePrompt": False,
            "seed": 42,
            "addWatermark": False,
            "outputOptions": {"mimeType": "image/jpeg", "compressionQuality": 80},
        },
    )
    assert "prompt" not in jpeg[0]
    assert (jpeg[0]["mimeType"], image_of(jpeg[0]).format) == ("image/jpeg", "JPEG")

    # Without sampleCount Imagen makes four.
    assert len(await predict(client, {})) == 4
    received = sandbox.vertex_imagen.received[-1]
    assert received.endpoint == model_path()
    assert received.instances == [{"prompt": "a red fox"}]
    # The client routes by endpoint; the emulator sees it like Vertex does.
    assert "endpoint=" in received.metadata["x-goog-request-params"]


@pytest.mark.parametrize(
    ("model", "parameters", "needle"),
    [
        (STANDARD, {"sampleCount": 5}, "sampleCount"),
        (STANDARD, {"sampleCount": 0}, "sampleCount"),
        (STANDARD, {"sampleCount": 1.5}, "sampleCount"),
        (STANDARD, {"aspectRatio": "3:2"}, "aspectRatio"),
        (STANDARD, {"sampleImageSize": "4K"}, "sampleImageSize"),
        (FAST, {"sampleImageSize": "2K"}, "sampleImageSize"),
        (STANDARD, {"seed": 1}, "addWatermark"),
        (STANDARD, {"seed": 2**32, "addWatermark": False}, "seed"),
        (STANDARD, {"negativePrompt": "blur"}, "negativePrompt"),
        (STANDARD, {"includeRaiReason": "yes"}, "includeRaiReason"),
        (STANDARD, {"personGeneration": "everyone"}, "personGeneration"),
        (STANDARD, {"outputOptions": {"mimeType": "image/webp"}}, "mimeType"),
        (STANDARD, {"outputOptions": {"compressionQuality": 101}}, "compressionQuality"),
    ],
)
async def test_invalid_parameters_are_invalid_argument(
    client: PredictionServiceAsyncClient,
    faults: FaultPlan,
    model: str,
    parameters: dict[str, Any],
    needle: str,
) -> None:
    with pytest.raises(api_exceptions.InvalidArgument) as caught:
        await predict(client, parameters, endpoint=model_path(model))
    assert needle in caught.value.message
    # Invalid requests do not consume the fault plan.
    assert faults.stats.faults.total() == 0


@pytest.mark.parametrize(
    ("instances", "needle"),
    [
        ([{"prompt": "a"}, {"prompt": "b"}], "one instance"),
        ([{"prompt": ""}], "prompt"),
        ([{"prompt": "a", "image": {"bytesBase64Encoded": "aGk="}}], "prompt"),
        (["just text"], "prompt"),
    ],
)
async def test_invalid_instances_are_invalid_argument(
    client: PredictionServiceAsyncClient, instances: list[Any], needle: str
) -> None:
    with pytest.raises(api_exceptions.InvalidArgument) as caught:
        await predict(client, instances=instances)
    assert needle in caught.value.message


async def test_routing_errors(client: PredictionServiceAsyncClient) -> None:
    with pytest.raises(api_exceptions.NotFound) as missing:
        await predict(client, endpoint=model_path("imagen-9.0-generate-001"))
    assert "imagen-9.0-generate-001" in missing.value.message

    with pytest.raises(api_exceptions.PermissionDenied) as denied:
        await predict(client, endpoint=model_path(project="someone-elses"))
    assert denied.value.reason == "IAM_PERMISSION_DENIED"
    assert denied.value.domain == "aiplatform.googleapis.com"

    with pytest.raises(api_exceptions.InvalidArgument):
        await predict(client, endpoint="projects/p/endpoints/123")


async def test_auth_metadata(client: PredictionServiceAsyncClient, sandbox: SandboxServer) -> None:
    # The sandbox accepts the anonymous caller by default...
    assert len(await predict(client)) == 1
    # ...but a malformed credential is refused like Google refuses it.
    with pytest.raises(api_exceptions.Unauthenticated) as malformed:
        await predict(client, metadata=(("authorization", "Basic dXNlcjpwYXNz"),))
    assert malformed.value.reason == "ACCESS_TOKEN_TYPE_UNSUPPORTED"

    sandbox.vertex_imagen.require_auth = True
    with pytest.raises(api_exceptions.Unauthenticated) as missing:
        await predict(client)
    assert missing.value.reason == "CREDENTIALS_MISSING"
    assert "missing required authentication credential" in missing.value.message
    assert len(await predict(client, metadata=(("authorization", "Bearer ya29.token"),))) == 1
    # A credential is never kept, even the emulator's.
    assert "authorization" not in sandbox.vertex_imagen.received[-1].metadata


async def test_error_fault_shapes(client: PredictionServiceAsyncClient, faults: FaultPlan) -> None:
    faults.push(FaultMode.BAD_REQUEST)
    faults.push(FaultMode.CONTENT_FILTER)
    faults.push(FaultMode.RATE_LIMIT, retry_after=1.5)
    faults.push(FaultMode.RATE_LIMIT)
    faults.push(FaultMode.SERVER_ERROR)
    faults.push(FaultMode.SERVER_ERROR, variant=SERVER_ERROR_UNAVAILABLE)

    with pytest.raises(api_exceptions.InvalidArgument):
        await predict(client)
    with pytest.raises(api_exceptions.InvalidArgument) as blocked:
        await predict(client)
    assert "could not be submitted" in blocked.value.message
    assert "Support codes" in blocked.value.message

    with pytest.raises(api_exceptions.ResourceExhausted) as limited:
        await predict(client)
    [retry] = [d for d in limited.value.details if isinstance(d, error_details_pb2.RetryInfo)]
    assert retry.retry_delay.ToTimedelta().total_seconds() == 1.5
    assert "Quota exceeded" in limited.value.message
    with pytest.raises(api_exceptions.ResourceExhausted) as bare:
        await predict(client)
    assert not [d for d in bare.value.details if isinstance(d, error_details_pb2.RetryInfo)]

    with pytest.raises(api_exceptions.InternalServerError):
        await predict(client)
    with pytest.raises(api_exceptions.ServiceUnavailable):
        await predict(client)
    assert faults.stats.completed == 6


async def test_content_filter_success_shapes(
    client: PredictionServiceAsyncClient, faults: FaultPlan
) -> None:
    with_reasons = {"sampleCount": 4, "includeRaiReason": True}
    faults.push(FaultMode.CONTENT_FILTER, variant=CONTENT_FILTER_PARTIAL)
    partial = await predict(client, with_reasons)
    assert [("bytesBase64Encoded" in p, p.get("raiFilteredReason")) for p in partial] == [
        (True, None),
        (True, None),
        (False, RAI_FILTERED_REASON),
        (False, RAI_FILTERED_REASON),
    ]

    # Without includeRaiReason, Vertex leaves the filtered images out.
    faults.push(FaultMode.CONTENT_FILTER, variant=CONTENT_FILTER_PARTIAL)
    assert len(await predict(client, {"sampleCount": 4})) == 2
    faults.push(FaultMode.CONTENT_FILTER, variant=CONTENT_FILTER_SILENT)
    assert len(await predict(client, with_reasons)) == 2

    faults.push(FaultMode.CONTENT_FILTER, variant=CONTENT_FILTER_ALL)
    everything = await predict(client, with_reasons)
    assert [p.keys() for p in everything] == [{"raiFilteredReason"}] * 4
    faults.push(FaultMode.CONTENT_FILTER, variant=CONTENT_FILTER_ALL)
    assert await predict(client, {"sampleCount": 4}) == []


async def test_prompt_directive_injects_a_fault(
    client: PredictionServiceAsyncClient, faults: FaultPlan
) -> None:
    prompt = "fox [sandbox:fault=content_filter] [sandbox:variant=partial]"
    predictions = await predict(client, {"sampleCount": 2, "includeRaiReason": True}, prompt=prompt)
    assert [("raiFilteredReason" in p) for p in predictions] == [False, True]
    assert faults.stats.faults[FaultMode.CONTENT_FILTER] == 1


async def test_timeout_hangs_until_the_client_gives_up(
    client: PredictionServiceAsyncClient, faults: FaultPlan
) -> None:
    faults.push(FaultMode.TIMEOUT)
    with pytest.raises(api_exceptions.DeadlineExceeded):
        await predict(client, timeout=0.3)
    stats = await faults.wait_for(lambda s: s.in_flight == 0)
    assert (stats.cancelled, stats.completed) == (1, 0)


async def test_drop_connection_cuts_the_connection(
    client: PredictionServiceAsyncClient, faults: FaultPlan
) -> None:
    faults.push(FaultMode.DROP_CONNECTION)
    with pytest.raises(api_exceptions.ServiceUnavailable):
        await predict(client)
    stats = await faults.wait_for(lambda s: s.in_flight == 0)
    assert (stats.dropped, stats.completed) == (1, 0)
    # The channel reconnects, through the relay, for a later call. The very
    # next one can still race the channel noticing the closed socket and get
    # UNAVAILABLE (seen once in CI), which callers retry, as our backend does.
    for attempt in range(3):
        try:
            assert len(await predict(client)) == 1
            break
        except api_exceptions.ServiceUnavailable:
            if attempt == 2:
                raise
            await asyncio.sleep(0.1)


async def test_latency_and_cancellation(
    client: PredictionServiceAsyncClient, faults: FaultPlan
) -> None:
    faults.latencies = [30.0]
    task = asyncio.create_task(predict(client))
    await faults.wait_for(lambda s: s.in_flight == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = await faults.wait_for(lambda s: s.in_flight == 0)
    assert (stats.received, stats.cancelled) == (1, 1)


async def test_lifecycle_and_settings_overrides() -> None:
    sandbox = SandboxServer("127.0.0.1", 0)
    with pytest.raises(RuntimeError):
        _ = sandbox.vertex_imagen.port
    await sandbox.start()
    try:
        emulator = sandbox.vertex_imagen
        overrides = sandbox.settings_overrides()
        assert overrides["vertex_api_endpoint"] == f"http://127.0.0.1:{emulator.port}"
        assert emulator.port != sandbox.port
        assert overrides["vertex_project"] == SANDBOX_VERTEX_PROJECT
        target = emulator.endpoint.removeprefix("http://")
        channel = grpc.aio.insecure_channel(target)
        client = PredictionServiceAsyncClient(
            transport=PredictionServiceGrpcAsyncIOTransport(host=target, channel=channel)
        )
        emulator.faults.push(FaultMode.TIMEOUT)
        hanging = asyncio.create_task(predict(client, timeout=30))
        await emulator.faults.wait_for(lambda s: s.in_flight == 1)
    finally:
        await sandbox.stop()
    # Stopping ends the call in progress instead of waiting for it.
    with pytest.raises((api_exceptions.ServiceUnavailable, api_exceptions.Cancelled)):
        await asyncio.wait_for(hanging, 5)
    assert emulator.faults.stats.in_flight == 0
    with pytest.raises(api_exceptions.ServiceUnavailable):
        await predict(client, timeout=2)
    await channel.close()
