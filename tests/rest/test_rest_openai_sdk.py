"""The official `openai` SDK (and raw HTTP) against the sidecar, in front of
the real gRPC service whose backends talk to the sandbox emulators."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from server.sandbox.faults import FaultMode
from tests.rest.conftest import RealStack, sidecar_for
from tests.support.images import alpha_mask, png, size_of

GENERATION_ID = re.compile(r"^gen-[0-9a-z]{16}$")
COST = re.compile(r"^\d+\.\d{8}$")


def _async_client(stack: RealStack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{stack.base_url}/v1", api_key="ck-your-key-here", max_retries=0
    )


async def _configured(stack: RealStack, model: str) -> bool:
    async with _async_client(stack) as client:
        page = await client.models.list()
    return any(m.id == model and (m.model_extra or {}).get("configured") for m in page.data)


# --- the seed's examples ----------------------------------------------------------------


async def test_the_seed_python_example(stack: RealStack, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png(512, 512))
    imagen_configured = await _configured(stack, "google/imagen-4.0-fast")

    def seed_example() -> list[Any]:
        # The seed page's code, with base_url pointed at the sidecar.
        client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="ck-your-key-here")
        results = []
        with client:
            response = client.images.generate(
                model="azure/flux-kontext-pro",
                prompt="A futuristic cityscape at night, neon lights, cyberpunk style, detailed",
                size="1792x1024",
                n=1,
            )
            results.append(response)
            if imagen_configured:
                response = client.images.generate(
                    model="google/imagen-4.0-fast",
                    prompt="A watercolor painting of a mountain lake at sunrise",
                    size="1024x1024",
                    n=4,
                )
                results.append(response)
            with open(photo, "rb") as image:
                response = client.images.edit(
                    model="azure/flux-kontext-pro",
                    image=image,
                    prompt="Add a rainbow in the sky",
                    size="1024x1024",
                )
            results.append(response)
        return results

    results = await asyncio.to_thread(seed_example)
    generated, *rest = results
    edited = rest[-1]
    for response in results:
        assert response.data
        assert all(i.url and i.url.startswith("https://media.test/media/") for i in response.data)
        assert all(i.b64_json is None for i in response.data)
        extra = response.model_extra or {}
        assert GENERATION_ID.match(extra["x_chuizi"]["generation_id"])
    assert len(generated.data or []) == 1
    assert (generated.model_extra or {})["x_chuizi"]["cost"] == "0.05000000"
    assert len(edited.data or []) == 1
    if imagen_configured:
        assert len(rest[0].data or []) == 4


async def test_seed_generate_n4_with_imagen(stack: RealStack) -> None:
    if not await _configured(stack, "google/imagen-4.0-fast"):
        pytest.skip(
            "google/imagen-4.0-fast is not configured in this build (its Vertex backend "
            "and sandbox emulator are not here yet)"
        )
    async with _async_client(stack) as client:
        response = await client.images.generate(
            model="google/imagen-4.0-fast",
            prompt="A watercolor painting of a mountain lake at sunrise",
            size="1024x1024",
            n=4,
        )
    assert response.data is not None
    assert len(response.data) == 4
    assert len({i.url for i in response.data}) == 4


async def test_the_seed_curl_call_with_raw_http(stack: RealStack) -> None:
    body = (
        '{ "model": "azure/flux-kontext-pro", "prompt": "A minimalist logo design for a coffee '
        'shop called \'Morning Brew\', clean lines, warm colors", "size": "1024x1024", '
        '"n": 1 }'
    )
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        response = await http.post(
            "/v1/images/generations",
            content=body,
            headers={
                "Authorization": "Bearer ck-your-key-here",
                "Content-Type": "application/json",
            },
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "content-encoding" not in response.headers
    result = response.json()
    # The seed's keys, plus OpenAI's own response fields.
    assert list(result) == [
        "created",
        "data",
        "background",
        "output_format",
        "quality",
        "size",
        "x_chuizi",
    ]
    assert (result["background"], result["output_format"], result["quality"]) == (
        "opaque",
        "png",
        "auto",
    )
    assert result["size"] == "1024x1024"
    assert isinstance(result["created"], int)
    assert [list(item) for item in result["data"]] == [["url"]]
    assert list(result["x_chuizi"]) == [
        "generation_id",
        "cost",
        "latency_ms",
        "model",
        "served_by",
        "upstream_model",
        "images",
    ]
    assert result["x_chuizi"]["upstream_model"] == "FLUX.1-Kontext-pro"
    (produced,) = result["x_chuizi"]["images"]
    assert (produced["width"], produced["height"]) == (1024, 1024)
    # FLUX takes a seed: one was invented and recorded so the image can be remade.
    assert isinstance(produced["seed"], int)
    assert GENERATION_ID.match(result["x_chuizi"]["generation_id"])
    assert result["x_chuizi"]["cost"] == "0.05000000"
    assert COST.match(result["x_chuizi"]["cost"])
    assert isinstance(result["x_chuizi"]["latency_ms"], int)
    assert result["data"][0]["url"].endswith(".png")

    # The record is there to fetch again, in the same shape.
    generation_id = result["x_chuizi"]["generation_id"]
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        again = await http.get(f"/v1/generations/{generation_id}")
    assert again.json()["data"] == result["data"]
    assert again.json()["x_chuizi"]["generation_id"] == generation_id


async def test_b64_json_returns_the_real_image(stack: RealStack) -> None:
    async with _async_client(stack) as client:
        response = await client.images.generate(
            model="azure/flux-kontext-pro",
            prompt="a red fox",
            size="1024x1024",
            response_format="b64_json",
        )
    assert response.data is not None
    (image,) = response.data
    assert image.url is None
    assert image.b64_json is not None
    assert size_of(base64.b64decode(image.b64_json)) == (1024, 1024)


async def test_edit_with_image_list_and_b64(stack: RealStack) -> None:
    async with _async_client(stack) as client:
        response = await client.images.edit(
            model="azure/flux-kontext-pro",
            image=[("a.png", png(256, 256), "image/png")],
            prompt="make it blue",
            response_format="b64_json",
        )
    assert response.data is not None
    assert response.data[0].b64_json


# --- errors, as the SDK raises them ------------------------------------------------------


async def test_bad_size_and_n_are_bad_request_errors(stack: RealStack) -> None:
    async with _async_client(stack) as client:
        with pytest.raises(openai.BadRequestError) as bad_size:
            await client.images.generate(model="azure/flux-kontext-pro", prompt="x", size="999x999")
        with pytest.raises(openai.BadRequestError) as bad_n:
            await client.images.generate(model="azure/flux-kontext-pro", prompt="x", n=9)
    assert bad_size.value.param == "size"
    assert bad_n.value.param == "n"
    assert bad_n.value.code == "invalid_argument"


async def test_unknown_model_and_generation_are_not_found(stack: RealStack) -> None:
    async with _async_client(stack) as client:
        with pytest.raises(openai.NotFoundError) as model:
            await client.images.generate(model="acme/nothing", prompt="x")
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        generation = await http.get("/v1/generations/gen-0000000000000000")
    assert model.value.code == "model_not_found"
    assert generation.status_code == 404
    assert generation.json()["error"]["code"] == "generation_not_found"


async def test_upstream_429_is_a_rate_limit_error_with_retry_after(stack: RealStack) -> None:
    stack.sandbox.azure_flux.faults.push(FaultMode.RATE_LIMIT, retry_after=7)
    async with _async_client(stack) as client:
        with pytest.raises(openai.RateLimitError) as raised:
            await client.images.generate(model="azure/flux-kontext-pro", prompt="x")
    assert raised.value.status_code == 429
    assert raised.value.code == "upstream_rate_limited"
    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.response.headers["retry-after-ms"] == "7000"


async def test_safety_refusal_is_moderation_blocked(stack: RealStack) -> None:
    stack.sandbox.azure_flux.faults.push(FaultMode.CONTENT_FILTER)
    async with _async_client(stack) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.images.generate(model="azure/flux-kontext-pro", prompt="x")
    assert raised.value.code == "moderation_blocked"
    assert raised.value.type == "image_generation_user_error"


async def test_upstream_failure_is_a_5xx(stack: RealStack) -> None:
    stack.sandbox.azure_flux.faults.push(FaultMode.SERVER_ERROR)
    async with _async_client(stack) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            await client.images.generate(model="azure/flux-kontext-pro", prompt="x")
    assert raised.value.status_code == 502
    assert raised.value.code == "upstream_unavailable"
    assert "sandbox" not in raised.value.message.lower()


async def test_request_id_reuse_is_a_conflict(stack: RealStack) -> None:
    headers = {"Idempotency-Key": "order-42"}
    async with _async_client(stack) as client:
        first = await client.images.generate(
            model="azure/flux-kontext-pro", prompt="a fox", extra_headers=headers
        )
        replay = await client.images.generate(
            model="azure/flux-kontext-pro", prompt="a fox", extra_headers=headers
        )
        with pytest.raises(openai.ConflictError) as raised:
            await client.images.generate(
                model="azure/flux-kontext-pro", prompt="a wolf", extra_headers=headers
            )
    assert first.model_extra == replay.model_extra  # same generation, not paid twice
    assert raised.value.code == "request_id_conflict"


async def test_the_upstream_deadline_is_a_gateway_timeout(stack: RealStack) -> None:
    stack.sandbox.azure_flux.faults.push(FaultMode.TIMEOUT)
    # A second sidecar, with a short deadline, in front of the same service.
    settings = stack.settings.model_copy(update={"rest_upstream_timeout_s": 0.5})
    async with sidecar_for(stack.grpc_target, settings) as sidecar:
        client = openai.AsyncOpenAI(base_url=f"{sidecar.base_url}/v1", api_key="k", max_retries=0)
        async with client:
            with pytest.raises(openai.InternalServerError) as raised:
                await client.images.generate(model="azure/flux-kontext-pro", prompt="x")
    assert raised.value.status_code == 504
    await stack.sandbox.azure_flux.faults.wait_for(lambda s: s.in_flight == 0)


# --- multipart against the real service ---------------------------------------------------


async def test_multipart_problems(stack: RealStack) -> None:
    photo = png(256, 256)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as http:
        not_an_image = await http.post(
            "/v1/images/edits",
            files={"image": ("notes.txt", b"just some text", "text/plain")},
            data={"model": "azure/flux-kontext-pro", "prompt": "x"},
        )
        missing = await http.post(
            "/v1/images/edits",
            files={"mask": ("m.png", alpha_mask(256, 256), "image/png")},
            data={"model": "azure/flux-kontext-pro", "prompt": "x"},
        )
        oversized = await http.post(
            "/v1/images/edits",
            files={"image": ("big.png", photo + b"\x00" * (5 * 1024 * 1024), "image/png")},
            data={"model": "azure/flux-kontext-pro", "prompt": "x"},
        )
        # A mask asks for inpainting, which FLUX Kontext cannot do: refused,
        # not silently ignored.
        masked = await http.post(
            "/v1/images/edits",
            files=[
                ("image", ("a.png", photo, "image/png")),
                ("mask", ("m.png", alpha_mask(256, 256), "image/png")),
            ],
            data={"model": "azure/flux-kontext-pro", "prompt": "x"},
        )
        as_json = await http.post(
            "/v1/images/edits", json={"model": "azure/flux-kontext-pro", "prompt": "x"}
        )
    assert (not_an_image.status_code, not_an_image.json()["error"]["param"]) == (400, "image")
    assert (missing.status_code, missing.json()["error"]["param"]) == (400, "image")
    assert oversized.status_code == 413
    assert (masked.status_code, masked.json()["error"]["param"]) == (400, "operation")
    assert masked.json()["error"]["code"] == "capability_not_supported"
    assert as_json.status_code == 415


# --- streaming and cancellation ------------------------------------------------------------


async def test_streaming_through_the_sdk(stack: RealStack) -> None:
    async with _async_client(stack) as client:
        stream = await client.images.generate(
            model="azure/flux-kontext-pro", prompt="a fox", n=2, stream=True
        )
        events = [event async for event in stream]
    # The SDK sees the image events only, each as OpenAI's completed event:
    # the record comes after [DONE], which ends the SDK's stream.
    assert [type(e).__name__ for e in events] == ["ImageGenCompletedEvent"] * 2
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    extra = [e.model_extra or {} for e in events]
    assert sorted(x["index"] for x in extra) == [0, 1]
    # A raw reader gets the record after the sentinel.
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
        raw = await http.post(
            "/v1/images/generations",
            json={"model": "azure/flux-kontext-pro", "prompt": "a fox", "n": 2, "stream": True},
            headers={"Authorization": "Bearer ck-your-key-here"},
        )
    head, done, tail = raw.text.partition("data: [DONE]\n\n")
    assert done and head.count("event: image_generation.completed") == 2
    assert tail.startswith("event: x_chuizi.generation\n")
    record = json.loads(tail.split("data: ", 1)[1])
    assert len(record["data"]) == 2
    assert record["x_chuizi"]["cost"] == "0.10000000"


async def test_client_disconnect_cancels_the_upstream_call(stack: RealStack) -> None:
    faults = stack.sandbox.azure_flux.faults
    http = httpx.AsyncClient(base_url=stack.base_url, timeout=60)
    request = asyncio.create_task(
        http.post(
            "/v1/images/generations",
            json={"model": "azure/flux-kontext-pro", "prompt": "a fox [sandbox:latency=30]"},
        )
    )
    await faults.wait_for(lambda s: s.in_flight == 1)
    request.cancel()
    await http.aclose()
    stats = await faults.wait_for(lambda s: s.cancelled == 1 and s.in_flight == 0)
    assert stats.completed == 0


async def test_stream_disconnect_cancels_the_remaining_upstream_calls(stack: RealStack) -> None:
    faults = stack.sandbox.azure_flux.faults
    faults.latencies = [0.0, 30.0]
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
        body = {"model": "azure/flux-kontext-pro", "prompt": "a fox", "n": 2, "stream": True}
        async with http.stream("POST", "/v1/images/generations", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("event: image_generation.completed"):
                    break  # one image is enough: hang up
    stats = await faults.wait_for(lambda s: s.cancelled == 1 and s.in_flight == 0)
    assert stats.completed == 1
