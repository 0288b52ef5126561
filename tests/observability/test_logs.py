"""JSON access lines from a real `image-service dev`, parsed field by field.

One REST request carries a caller's `X-Request-Id` through the sidecar to
the gRPC server: both access lines carry it, with the generation id, model,
image count and cost; a direct gRPC call gets its id back in the headers;
an id-less caller gets one made up. Every line on stderr is valid JSON.
"""

from __future__ import annotations

import pathlib

import grpc
import httpx
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

from tests.observability.dev_process import dev_process

pytestmark = pytest.mark.spawns_processes

KONTEXT = "azure/flux-kontext-pro"


def _access(lines: list[dict[str, object]], kind: str, request_id: str) -> dict[str, object]:
    found = [
        line
        for line in lines
        if line.get("logger") == "server.access"
        and line.get("kind") == kind
        and line.get("request_id") == request_id
    ]
    assert len(found) == 1, f"{kind} access lines for {request_id}: {found}"
    return found[0]


async def test_json_access_lines_carry_ids_through_both_processes(tmp_path: pathlib.Path) -> None:
    async with dev_process(tmp_path, IMAGE_SERVICE_LOG_FORMAT="json") as dev:
        async with httpx.AsyncClient(base_url=dev.http_url) as client:
            response = await client.post(
                "/v1/images/generations",
                json={"model": KONTEXT, "prompt": "a quiet harbour", "n": 2},
                headers={"X-Request-Id": "caller-req-42"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == "caller-req-42"
            generation_id = response.json()["x_chuizi"]["generation_id"]
            anonymous = await client.get("/v1/models", timeout=30)
            made_up = anonymous.headers["x-request-id"]
        assert made_up.startswith("req-")

        async with grpc.aio.insecure_channel(dev.grpc_target) as channel:
            call = pb_grpc.ImageServiceStub(channel).Generate(
                pb.GenerateRequest(model=KONTEXT, prompt="x"),
                metadata=(("x-request-id", "grpc-caller-7"),),
                timeout=30,
            )
            generation = await call
            trailers = dict(await call.trailing_metadata())
        assert trailers["x-request-id"] == "grpc-caller-7"

    lines = dev.json_lines()  # raises if any line is not JSON
    http = _access(lines, "http", "caller-req-42")
    rpc = _access(lines, "rpc", "caller-req-42")
    assert http["route"] == "/v1/images/generations" and http["status"] == "200"
    assert http["method"] == "POST"
    assert rpc["method"] == "/chuizi.image.v1.ImageService/Generate" and rpc["status"] == "OK"
    for line in (http, rpc):
        assert str(line["generation_id"]).startswith("gen-")
        assert line["model"] == KONTEXT
        assert line["images"] == 2
        assert line["cost"] == "0.10000000"
        assert line["key_id"] == ""
        assert isinstance(line["latency_ms"], float | int) and line["latency_ms"] >= 0
        assert line["level"] == "INFO" and "time" in line
    assert http["generation_id"] == rpc["generation_id"] == generation_id

    direct = _access(lines, "rpc", "grpc-caller-7")
    assert direct["generation_id"] == generation.generation_id
    assert direct["images"] == 1

    models_http = _access(lines, "http", made_up)
    models_rpc = _access(lines, "rpc", made_up)
    assert models_http["route"] == "/v1/models"
    assert models_rpc["method"] == "/chuizi.image.v1.ImageService/ListModels"
    assert "a quiet harbour" not in dev.log_path.read_text()


async def test_text_format_appends_the_fields(tmp_path: pathlib.Path) -> None:
    async with dev_process(tmp_path) as dev:
        async with httpx.AsyncClient(base_url=dev.http_url) as client:
            response = await client.get(
                "/v1/models", headers={"X-Request-Id": "text-req-1"}, timeout=30
            )
        assert response.status_code == 200
    access = [line for line in dev.log_lines() if " server.access: " in line]
    assert any(
        "GET /v1/models 200" in line and "request_id=text-req-1" in line and "kind=http" in line
        for line in access
    ), access
    assert any("ListModels OK" in line and "request_id=text-req-1" in line for line in access), (
        access
    )


async def test_dev_serves_metrics_on_both_ports(tmp_path: pathlib.Path) -> None:
    async with dev_process(tmp_path) as dev, httpx.AsyncClient() as client:
        service = await client.get(dev.metrics_url, timeout=10)
        sidecar = await client.get(f"{dev.http_url}/metrics", timeout=10)
    assert service.status_code == 200 and sidecar.status_code == 200
    assert "image_service_generations_in_flight" in service.text
    assert "process_cpu_seconds_total" in service.text
    assert "http_server_request_duration_seconds" in sidecar.text
