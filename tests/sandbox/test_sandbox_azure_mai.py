"""The Azure MAI emulator's wire behaviour, driven with a plain HTTP client."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from server.sandbox.azure_mai import CONTENT_FILTER_OUTPUT, SANDBOX_AZURE_MAI_KEY
from server.sandbox.faults import FaultMode
from server.sandbox.server import SandboxServer
from tests.support.images import png, size_of

AUTH = {"api-key": SANDBOX_AZURE_MAI_KEY}
ROUTE = "/mai/v1/images/generations"


def body(**changes: Any) -> dict[str, Any]:
    return {"model": "MAI-Image-2", "prompt": "a fox", "width": 1024, "height": 1024, **changes}


async def post(
    client: httpx.AsyncClient,
    payload: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        ROUTE, json=payload, headers=AUTH if headers is None else headers, params=params
    )


@pytest.mark.parametrize("size", [(1024, 1024), (1344, 768), (768, 1344), (768, 768)])
async def test_renders_exactly_the_requested_size_as_png(
    client: httpx.AsyncClient, size: tuple[int, int]
) -> None:
    response = await post(client, body(width=size[0], height=size[1]))
    assert response.status_code == 200, response.text
    payload = response.json()
    assert len(payload["data"]) == 1
    image = Image.open(io.BytesIO(base64.b64decode(payload["data"][0]["b64_json"])))
    assert (image.format, image.size) == ("PNG", size)
    assert payload["usage"]["num_output_tokens"] > 0
    assert payload["usage"]["num_input_text_tokens"] == 2


async def test_one_image_whatever_n_says(client: httpx.AsyncClient) -> None:
    response = await post(client, body(n=4))
    assert len(response.json()["data"]) == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 512}, "'width' must be at least 768 pixels."),
        ({"height": 700}, "'height' must be at least 768 pixels."),
        ({"width": 1792, "height": 1024}, "at most 1048576 pixels"),
        ({"width": 2048, "height": 2048}, "at most 1048576 pixels"),
        ({"width": "1024"}, "'width' must be an integer."),
        ({"width": None}, "'width' is required."),
        ({"prompt": " "}, "'prompt' is required."),
        ({"model": None}, "'model' is required."),
    ],
)
async def test_out_of_limit_bodies_are_400(
    client: httpx.AsyncClient, sandbox: SandboxServer, changes: dict[str, Any], message: str
) -> None:
    response = await post(client, {k: v for k, v in body(**changes).items() if v is not None})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "BadRequest"
    assert message in error["message"]
    # Invalid requests do not consume the fault plan.
    assert sandbox.azure_mai.faults.stats.faults.total() == 0


async def test_auth_route_and_deployment_errors(client: httpx.AsyncClient) -> None:
    missing = await post(client, body(), headers={})
    assert missing.status_code == 401
    assert "missing subscription key" in missing.json()["error"]["message"]
    wrong = await post(client, body(), headers={"api-key": "nope"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "401")
    bearer = await post(
        client, body(), headers={"Authorization": f"Bearer {SANDBOX_AZURE_MAI_KEY}"}
    )
    assert bearer.status_code == 401
    unknown = await post(client, body(model="MAI-Image-9"))
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "DeploymentNotFound")
    # Deployment names are matched case-insensitively, as in Microsoft's example.
    assert (await post(client, body(model="mai-image-2"))).status_code == 200
    assert (await post(client, body(), params={"api-version": "preview"})).status_code == 200
    assert (await post(client, body(), params={"api-version": "1999-01-01"})).status_code == 400
    # The edits route exists (MAI-Image-2.5/2.6) and takes multipart only.
    as_json = await client.post("/mai/v1/images/edits", json=body(), headers=AUTH)
    assert (as_json.status_code, as_json.json()["error"]["code"]) == (400, "BadRequest")
    other = await client.post("/mai/v1/images/variations", json=body(), headers=AUTH)
    assert other.status_code == 404


async def test_fault_shapes(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    faults = sandbox.azure_mai.faults
    faults.push(FaultMode.BAD_REQUEST)
    faults.push(FaultMode.CONTENT_FILTER)
    faults.push(FaultMode.CONTENT_FILTER, variant=CONTENT_FILTER_OUTPUT)
    faults.push(FaultMode.RATE_LIMIT, retry_after=1.5)
    faults.push(FaultMode.RATE_LIMIT)
    faults.push(FaultMode.SERVER_ERROR)

    bad = await post(client, body())
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "BadRequest")
    prompt_filter = await post(client, body())
    error = prompt_filter.json()["error"]
    assert (prompt_filter.status_code, error["code"]) == (400, "content_filter")
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert error["innererror"]["content_filter_result"]["sexual"]["filtered"] is True
    output_filter = await post(client, body())
    assert (output_filter.status_code, output_filter.json()["error"]["code"]) == (
        400,
        "contentFilter",
    )
    limited = await post(client, body())
    assert limited.status_code == 429
    assert (limited.headers["retry-after"], limited.headers["retry-after-ms"]) == ("2", "1500")
    bare = await post(client, body())
    assert bare.status_code == 429 and "retry-after" not in bare.headers
    assert (await post(client, body())).status_code == 500
    assert (await post(client, body())).status_code == 200


async def test_timeout_hangs_and_drop_truncates(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    faults = sandbox.azure_mai.faults
    faults.hang_s = 0.2
    faults.push(FaultMode.TIMEOUT)
    faults.push(FaultMode.DROP_CONNECTION)
    late = await post(client, body())
    assert late.status_code == 504
    with pytest.raises(httpx.RemoteProtocolError):
        await post(client, body())
    assert faults.stats.dropped == 1


async def test_the_deployment_quota_answers_429_with_the_wait(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    emulator = sandbox.azure_mai
    emulator.requests_per_minute, emulator.rate_window_s = 2, 0.5
    assert [(await post(client, body())).status_code for _ in range(2)] == [200, 200]

    refused = await post(client, body())

    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after-ms"]) <= 500
    assert emulator.rate_limited == 1
    assert emulator.faults.stats.faults.total() == 2  # the 429 took no fault step
    await asyncio.sleep(int(refused.headers["retry-after-ms"]) / 1000 + 0.05)
    assert (await post(client, body())).status_code == 200


async def test_max_in_flight_counts_concurrent_requests(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    faults = sandbox.azure_mai.faults
    faults.default_latency = 0.3
    responses = await asyncio.gather(*(post(client, body()) for _ in range(3)))
    assert [r.status_code for r in responses] == [200] * 3
    assert faults.stats.max_in_flight == 3
    faults.reset()
    assert faults.stats.max_in_flight == 0
    faults.default_latency = 0.0
    await post(client, body())
    assert faults.stats.max_in_flight == 1


async def test_prompt_directives_drive_faults_and_stay_out_of_the_image(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    refused = await post(
        client, body(prompt="fox [sandbox:fault=rate_limit] [sandbox:retry_after=3]")
    )
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "3")
    received = sandbox.azure_mai.received[-1]
    assert received.body["prompt"].startswith("fox")


async def test_the_edit_route_checks_its_form_as_documented(client: httpx.AsyncClient) -> None:
    def form(model: str, images: int, prompt: str = "a hat") -> dict[str, object]:
        return {
            "data": {"model": model, "prompt": prompt},
            # A form without images still goes as multipart, with another part.
            "files": [("image[]", (f"{i}.png", png(900, 600), "image/png")) for i in range(images)]
            or [("note", ("note.txt", b"no image", "text/plain"))],
        }

    ok = await client.post("/mai/v1/images/edits", headers=AUTH, **form("MAI-Image-2.6", 2))
    assert ok.status_code == 200
    data = base64.b64decode(ok.json()["data"][0]["b64_json"])
    width, height = size_of(data)
    assert width * height <= 1024 * 1024 and abs(width / height - 1.5) < 0.02
    for bad, words in [
        (form("MAI-Image-2", 1), "does not support image edits"),
        (form("MAI-Image-2.6", 0), "Between 1 and 5"),
        (form("MAI-Image-2.6", 6), "Between 1 and 5"),
        (form("MAI-Image-2.6", 1, prompt=" "), "'prompt' is required"),
    ]:
        refused = await client.post("/mai/v1/images/edits", headers=AUTH, **bad)
        assert refused.status_code == 400 and words in refused.json()["error"]["message"]
