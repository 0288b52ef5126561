"""The Azure FLUX emulator's wire behaviour, driven with a plain HTTP client."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from typing import Any

import httpx
import pytest
from PIL import Image

from server.sandbox.azure_flux import (
    CONTENT_FILTER_FINISH_REASON,
    SANDBOX_AZURE_FLUX_KEY,
)
from server.sandbox.faults import FaultMode
from server.sandbox.render import render_png
from server.sandbox.server import SandboxServer

AUTH = {"Authorization": f"Bearer {SANDBOX_AZURE_FLUX_KEY}"}


async def post(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    *,
    model: str = "flux-2-pro",
    headers: dict[str, str] | None = None,
    version: str | None = "preview",
) -> httpx.Response:
    params = {} if version is None else {"api-version": version}
    return await client.post(
        f"/providers/blackforestlabs/v1/{model}",
        json=body,
        params=params,
        headers=AUTH if headers is None else headers,
    )


def image_of(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    return Image.open(io.BytesIO(data))


async def test_flux2_renders_the_requested_size_as_png(client: httpx.AsyncClient) -> None:
    response = await post(
        client, {"prompt": "a fox", "width": 1440, "height": 816, "output_format": "png"}
    )
    image = image_of(response)
    assert (image.format, image.size) == ("PNG", (1440, 816))
    meta = response.json()["request_meta"]
    assert meta["output_mp"] == pytest.approx(1.18, abs=0.01)
    assert meta["cost"] > 0


async def test_default_output_format_is_jpeg(client: httpx.AsyncClient) -> None:
    image = image_of(await post(client, {"prompt": "a fox"}))
    assert (image.format, image.size) == ("JPEG", (1024, 1024))


@pytest.mark.parametrize(
    ("ratio", "size"), [("1:1", (1024, 1024)), ("16:9", (1376, 768)), ("9:21", (672, 1568))]
)
async def test_kontext_renders_about_a_megapixel(
    client: httpx.AsyncClient, ratio: str, size: tuple[int, int]
) -> None:
    body = {"prompt": "a fox", "aspect_ratio": ratio, "output_format": "png"}
    assert image_of(await post(client, body, model="flux-kontext-pro")).size == size


@pytest.mark.parametrize(
    ("model", "body", "needle"),
    [
        ("flux-2-pro", {}, "prompt"),
        ("flux-2-pro", {"prompt": "x", "width": 1000, "height": 1024}, "width"),
        ("flux-2-pro", {"prompt": "x", "width": 1024, "height": 2048}, "height"),
        ("flux-2-pro", {"prompt": "x", "width": 1024}, "together"),
        ("flux-2-pro", {"prompt": "x", "aspect_ratio": "1:1"}, "aspect_ratio"),
        ("flux-2-pro", {"prompt": "x", "output_format": "gif"}, "output_format"),
        ("flux-2-pro", {"prompt": "x", "input_image": "not base64!"}, "input_image"),
        ("flux-2-pro", {"prompt": "x", "input_image": "aGVsbG8="}, "decodable"),
        ("flux-2-pro", {"prompt": "x", "input_image_9": "aGVsbG8="}, "input_image_9"),
        ("flux-2-pro", {"prompt": "x", "model": "FLUX.1-Kontext-pro"}, "model"),
        ("flux-kontext-pro", {"prompt": "x", "width": 1024, "height": 1024}, "aspect_ratio"),
        ("flux-kontext-pro", {"prompt": "x", "aspect_ratio": "3:1"}, "21:9"),
        ("flux-kontext-pro", {"prompt": "x", "input_image_2": "aGVsbG8="}, "at most 1"),
        ("flux-kontext-pro", {"prompt": "x", "safety_tolerance": 7}, "safety_tolerance"),
    ],
)
async def test_invalid_bodies_are_400(
    client: httpx.AsyncClient, sandbox: SandboxServer, model: str, body: dict[str, Any], needle: str
) -> None:
    response = await post(client, body, model=model)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "InvalidRequest"
    assert needle in error["message"]
    # Invalid requests do not consume the fault plan.
    assert sandbox.azure_flux.faults.stats.faults.total() == 0


async def test_edit_accepts_raw_base64_input(client: httpx.AsyncClient) -> None:
    source = base64.b64encode(render_png(300, 600, "in")).decode()
    body = {"prompt": "x", "input_image": source, "output_format": "png"}
    image = image_of(await post(client, body, model="flux-kontext-pro"))
    assert abs(image.size[0] / image.size[1] - 0.5) < 0.05
    meta = (await post(client, body, model="flux-kontext-pro")).json()["request_meta"]
    assert meta["input_mp"] == pytest.approx(0.18)


async def test_auth_version_and_route_errors(client: httpx.AsyncClient) -> None:
    wrong = await post(client, {"prompt": "x"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "401"
    assert (await post(client, {"prompt": "x"}, headers={})).status_code == 401
    api_key_header = await post(
        client, {"prompt": "x"}, headers={"api-key": SANDBOX_AZURE_FLUX_KEY}
    )
    assert api_key_header.status_code == 401
    assert (await post(client, {"prompt": "x"}, version=None)).status_code == 400
    assert (await post(client, {"prompt": "x"}, version="2024-01-01")).status_code == 400
    missing = await post(client, {"prompt": "x"}, model="flux-9")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "DeploymentNotFound"


async def test_fault_shapes(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    faults = sandbox.azure_flux.faults
    faults.push(FaultMode.BAD_REQUEST)
    faults.push(FaultMode.CONTENT_FILTER)
    faults.push(FaultMode.CONTENT_FILTER, variant=CONTENT_FILTER_FINISH_REASON)
    faults.push(FaultMode.RATE_LIMIT, retry_after=1.5)
    faults.push(FaultMode.SERVER_ERROR)

    bad = await post(client, {"prompt": "x"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "InvalidRequest")
    filtered = await post(client, {"prompt": "x"})
    assert filtered.status_code == 400
    assert "content filter" in filtered.json()["error"]["message"]
    filtered_ok = await post(client, {"prompt": "x"})
    assert filtered_ok.status_code == 200
    item = filtered_ok.json()["data"][0]
    assert item["finish_reason"] == "content_filter"
    assert "b64_json" not in item
    assert item["content_filter_results"]["sexual"]["filtered"] is True
    limited = await post(client, {"prompt": "x"})
    assert limited.status_code == 429
    assert (limited.headers["retry-after"], limited.headers["retry-after-ms"]) == ("2", "1500")
    assert (await post(client, {"prompt": "x"})).status_code == 500
    assert (await post(client, {"prompt": "x"})).status_code == 200
    assert faults.stats.completed == 6


async def test_drop_connection_truncates_the_response(
    client: httpx.AsyncClient, sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.azure_flux.faults.push(FaultMode.DROP_CONNECTION)
    with caplog.at_level(logging.INFO), pytest.raises(httpx.RemoteProtocolError):
        await post(client, {"prompt": "x"})
    assert sandbox.azure_flux.faults.stats.dropped == 1
    # The deliberate drop is not reported as an application error.
    assert not [r for r in caplog.records if r.name.startswith("uvicorn")]


async def test_prompt_directives(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    limited = await post(client, {"prompt": "x [sandbox:fault=rate_limit] [sandbox:retry_after=3]"})
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    started = asyncio.get_running_loop().time()
    slow = await post(client, {"prompt": "x [sandbox:latency=0.3]"})
    assert slow.status_code == 200
    assert asyncio.get_running_loop().time() - started >= 0.3


async def test_timeout_hangs_until_the_client_leaves(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    faults = sandbox.azure_flux.faults
    faults.push(FaultMode.TIMEOUT)
    with pytest.raises(httpx.ReadTimeout):
        await client.post(
            "/providers/blackforestlabs/v1/flux-2-pro",
            params={"api-version": "preview"},
            json={"prompt": "x"},
            headers=AUTH,
            timeout=0.3,
        )
    stats = await faults.wait_for(lambda s: s.in_flight == 0)
    assert (stats.cancelled, stats.completed) == (1, 0)
