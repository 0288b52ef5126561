"""Both processes' /metrics, scraped over HTTP after real requests.

A REST generation, a gRPC stream, a bad request and an upstream that fails
(then recovers on retry) each move exactly the counters and histograms they
should, with bounded labels and nothing from the prompt.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.sandbox.faults import FaultMode
from server.sandbox.server import SandboxServer
from tests.observability.s3 import s3_server
from tests.observability.scrape import TwoProcesses, delta, scrape, two_processes, value

KONTEXT = "azure/flux-kontext-pro"
IMAGEN_FAST = "google/imagen-4.0-fast"
SERVICE = "chuizi.image.v1.ImageService"
PROMPT = "a lighthouse drawn in chalk"


@pytest.fixture
async def both(sandbox: SandboxServer, tmp_path: pathlib.Path) -> AsyncIterator[TwoProcesses]:
    async with two_processes(sandbox, tmp_path) as running:
        yield running


async def test_a_rest_generation_moves_both_processes_metrics(both: TwoProcesses) -> None:
    service_before = await scrape(both.service_metrics_url)
    sidecar_before = await scrape(f"{both.sidecar_url}/metrics")

    async with httpx.AsyncClient(base_url=both.sidecar_url) as client:
        response = await client.post(
            "/v1/images/generations",
            json={"model": KONTEXT, "prompt": PROMPT, "n": 2},
            timeout=30,
        )
    assert response.status_code == 200, response.text

    service = await scrape(both.service_metrics_url)
    sidecar = await scrape(f"{both.sidecar_url}/metrics")
    labels = {"model": KONTEXT, "backend": "azure_flux"}
    assert delta(service_before, service, "image_service_images_total", **labels) == 2
    assert delta(service_before, service, "image_service_cost_usd_total", **labels) == (
        pytest.approx(0.10)
    )
    assert (
        delta(
            service_before,
            service,
            "image_service_generation_duration_seconds_count",
            code="OK",
            **labels,
        )
        == 1
    )
    # n=2 on a one-image-per-call model: two upstream calls.
    assert (
        delta(
            service_before,
            service,
            "image_service_upstream_call_duration_seconds_count",
            backend="azure_flux",
            model=KONTEXT,
            outcome="OK",
        )
        == 2
    )
    # Two images and one record written.
    assert (
        delta(
            service_before,
            service,
            "image_service_storage_put_duration_seconds_count",
            outcome="OK",
        )
        == 3
    )
    assert (
        delta(
            service_before,
            service,
            "rpc_server_duration_seconds_count",
            rpc_service=SERVICE,
            rpc_method="Generate",
            rpc_grpc_status_code="OK",
        )
        == 1
    )
    assert value(service, "image_service_generations_in_flight", **labels) == 0
    assert (
        delta(
            sidecar_before,
            sidecar,
            "http_server_request_duration_seconds_count",
            http_request_method="POST",
            http_route="/v1/images/generations",
            http_response_status_code="200",
        )
        == 1
    )
    # The sidecar exports only its own families.
    assert value(sidecar, "image_service_images_total") == 0
    for samples in (service, sidecar):
        assert not any(PROMPT in str(key) for key in samples)


async def test_a_stream_records_time_to_first_image(both: TwoProcesses) -> None:
    before = await scrape(both.service_metrics_url)
    messages = [
        message
        async for message in both.stack.stub.StreamGenerate(
            pb.GenerateRequest(model=IMAGEN_FAST, prompt=PROMPT, n=3), timeout=30
        )
    ]
    assert sum(m.HasField("image") for m in messages) == 3
    cost = float(messages[-1].generation.cost)

    after = await scrape(both.service_metrics_url)
    # A retired name routed to its successor is counted under the name called.
    labels = {"model": IMAGEN_FAST, "backend": "vertex_imagen"}
    assert delta(before, after, "image_service_time_to_first_image_seconds_count", **labels) == 1
    assert delta(before, after, "image_service_images_total", **labels) == 3
    assert cost > 0
    assert delta(before, after, "image_service_cost_usd_total", **labels) == pytest.approx(cost)
    assert (
        delta(
            before,
            after,
            "rpc_server_duration_seconds_count",
            rpc_method="StreamGenerate",
            rpc_grpc_status_code="OK",
        )
        == 1
    )


async def test_failures_count_by_code_and_reason(both: TwoProcesses) -> None:
    before = await scrape(both.service_metrics_url)
    sidecar_before = await scrape(f"{both.sidecar_url}/metrics")

    # A bad request: INVALID_ARGUMENT, no upstream call.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await both.stack.stub.Generate(
            pb.GenerateRequest(model=KONTEXT, prompt=PROMPT, n=99), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An unknown model through REST: counted under `other`, never its name.
    async with httpx.AsyncClient(base_url=both.sidecar_url) as client:
        response = await client.post(
            "/v1/images/generations",
            json={"model": "acme/secret-model-name", "prompt": PROMPT},
            timeout=30,
        )
    assert response.status_code == 404
    # The upstream fails twice with 500, then answers: two retries, one OK call.
    faults = both.stack.sandbox.emulator("azure_flux").faults
    faults.push(FaultMode.SERVER_ERROR, times=2)
    await both.stack.stub.Generate(pb.GenerateRequest(model=KONTEXT, prompt=PROMPT), timeout=30)
    # And fails for good (the default 4 attempts): an UNAVAILABLE generation.
    faults.push(FaultMode.SERVER_ERROR, times=4)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await both.stack.stub.Generate(pb.GenerateRequest(model=KONTEXT, prompt=PROMPT), timeout=30)
    failed_code = caught.value.code().name

    after = await scrape(both.service_metrics_url)
    sidecar = await scrape(f"{both.sidecar_url}/metrics")
    flux = {"backend": "azure_flux", "model": KONTEXT}
    assert (
        delta(
            before,
            after,
            "rpc_server_duration_seconds_count",
            rpc_method="Generate",
            rpc_grpc_status_code="INVALID_ARGUMENT",
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "image_service_generation_duration_seconds_count",
            model="other",
            code="NOT_FOUND",
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "image_service_upstream_retries_total",
            reason="UPSTREAM_UNAVAILABLE",
            **flux,
        )
        == 2 + 3
    )
    assert (
        delta(
            before,
            after,
            "image_service_upstream_call_duration_seconds_count",
            outcome="UPSTREAM_UNAVAILABLE",
            **flux,
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "image_service_upstream_call_duration_seconds_count",
            outcome="OK",
            **flux,
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "image_service_generation_duration_seconds_count",
            code=failed_code,
            **{"model": KONTEXT},
        )
        == 1
    )
    assert delta(before, after, "image_service_images_total", model=KONTEXT) == 1
    assert (
        delta(
            sidecar_before,
            sidecar,
            "http_server_request_duration_seconds_count",
            http_route="/v1/images/generations",
            http_response_status_code="404",
        )
        == 1
    )
    assert not any("secret-model-name" in str(key) for key in after)
    assert not any("secret-model-name" in str(key) for key in sidecar)


async def test_metrics_can_be_turned_off(sandbox: SandboxServer, tmp_path: pathlib.Path) -> None:
    async with two_processes(sandbox, tmp_path, metrics=False) as off:
        assert off.stack.service.metrics_server is None
        async with httpx.AsyncClient(base_url=off.sidecar_url) as client:
            assert (await client.get("/metrics")).status_code == 404
            response = await client.get("/v1/models")
        assert response.status_code == 200


async def test_a_replay_costs_nothing_and_storage_failures_are_counted(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    # R2 whose image bucket does not exist: every image write fails and the
    # images come back inline; records go to a bucket that does exist.
    with s3_server("records") as s3_url:
        async with two_processes(
            sandbox,
            tmp_path,
            storage="r2",
            r2_endpoint_url=s3_url,
            r2_bucket="no-such-bucket",
            r2_records_bucket="records",
            r2_access_key_id="AKIDMETRICSTEST00001",
            r2_secret_access_key="metrics-test-secret",
            r2_public_base_url="https://img.metrics.test",
        ) as both:
            before = await scrape(both.service_metrics_url)
            request = pb.GenerateRequest(model=KONTEXT, prompt=PROMPT, n=2, request_id="replay-1")
            first = await both.stack.stub.Generate(request, timeout=30)
            assert [image.stored for image in first.images] == [False, False]
            middle = await scrape(both.service_metrics_url)
            replayed = await both.stack.stub.Generate(request, timeout=30)
            assert replayed.generation_id == first.generation_id
            after = await scrape(both.service_metrics_url)

    labels = {"model": KONTEXT, "backend": "azure_flux"}
    assert delta(before, middle, "image_service_images_total", **labels) == 2
    assert delta(before, middle, "image_service_storage_inline_fallbacks_total", **labels) == 2
    assert delta(before, middle, "image_service_cost_usd_total", **labels) == pytest.approx(0.10)
    failed_writes = delta(
        before, middle, "image_service_storage_put_failures_total", reason="STORAGE_REJECTED"
    )
    assert failed_writes == 2  # a missing bucket is not retried
    assert failed_writes == delta(
        before, middle, "image_service_storage_put_duration_seconds_count"
    ) - delta(before, middle, "image_service_storage_put_duration_seconds_count", outcome="OK")
    # The replay delivers the same images again but nothing new was made or paid for.
    for name in ("image_service_images_total", "image_service_cost_usd_total"):
        assert delta(middle, after, name, **labels) == 0
    assert delta(middle, after, "rpc_server_duration_seconds_count", rpc_method="Generate") == 1


async def test_limiter_waits_and_refusals_are_counted(
    sandbox: SandboxServer, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One request a minute: the first passes at once, the second would have
    # to wait past its deadline and is refused without reaching the upstream.
    monkeypatch.setenv("IMAGE_SERVICE_AZURE_FLUX_REQUESTS_PER_MINUTE", "1")
    async with two_processes(sandbox, tmp_path) as both:
        before = await scrape(both.service_metrics_url)
        await both.stack.stub.Generate(pb.GenerateRequest(model=KONTEXT, prompt=PROMPT), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await both.stack.stub.Generate(
                pb.GenerateRequest(model=KONTEXT, prompt=PROMPT), timeout=30
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        after = await scrape(both.service_metrics_url)

    flux = {"backend": "azure_flux", "model": KONTEXT, "limit": "requests_per_minute"}
    assert delta(before, after, "image_service_limiter_wait_seconds_count", **flux) == 1
    assert delta(before, after, "image_service_limiter_refusals_total", **flux) == 1
    assert (
        delta(
            before,
            after,
            "image_service_upstream_call_duration_seconds_count",
            backend="azure_flux",
            outcome="UPSTREAM_RATE_LIMITED",
        )
        == 1
    )
