"""The DashScope (Wan 2.7) emulator's wire behaviour, driven with a plain HTTP client."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from server.sandbox.bailian_wan import (
    API_PREFIX,
    AT_DOWNLOAD,
    AT_POLL,
    AT_SUBMIT,
    IN_TASK,
    PARTIAL,
    PARTIAL_RESULTS,
    SANDBOX_DASHSCOPE_KEY,
    BailianWanEmulator,
)
from server.sandbox.faults import FaultMode
from server.sandbox.render import render_png
from server.sandbox.server import SandboxServer
from tests.support.images import size_of

AUTH = {"Authorization": f"Bearer {SANDBOX_DASHSCOPE_KEY}"}
ASYNC = {**AUTH, "X-DashScope-Async": "enable"}
SUBMIT = f"{API_PREFIX}/services/aigc/image-generation/generation"


@pytest.fixture
def emulator(sandbox: SandboxServer) -> BailianWanEmulator:
    return sandbox.bailian_wan


def body(
    prompt: str = "a fox",
    *,
    model: str = "wan2.7-image",
    images: tuple[str, ...] = (),
    **parameters: Any,
) -> dict[str, Any]:
    content: list[dict[str, str]] = [{"text": prompt}, *({"image": i} for i in images)]
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }


def data_uri(width: int, height: int) -> str:
    return "data:image/png;base64," + base64.b64encode(render_png(width, height, "in")).decode()


async def submit(
    client: httpx.AsyncClient, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(SUBMIT, json=payload, headers=ASYNC if headers is None else headers)


async def task_id_of(client: httpx.AsyncClient, payload: dict[str, Any]) -> str:
    response = await submit(client, payload)
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["task_status"] == "PENDING"
    return str(output["task_id"])


async def poll(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await client.get(f"{API_PREFIX}/tasks/{task_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def finished(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    for _ in range(200):
        answer = await poll(client, task_id)
        if answer["output"]["task_status"] not in ("PENDING", "RUNNING"):
            return answer
        await asyncio.sleep(0.02)
    raise AssertionError("the task did not finish")


def image_urls(answer: dict[str, Any]) -> list[str]:
    return [
        item["image"]
        for choice in answer["output"]["choices"]
        for item in choice["message"]["content"]
    ]


async def test_a_task_goes_pending_running_succeeded_and_serves_png(
    client: httpx.AsyncClient, emulator: BailianWanEmulator
) -> None:
    emulator.pending_fraction = 0.5
    emulator.faults.latencies = [600.0]  # PENDING until 300 s, RUNNING until 600 s
    task_id = await task_id_of(client, body(n=2, size="1344*768", seed=3))
    # The test moves the task's clock on rather than sleeping through each
    # phase, so a busy machine cannot make it miss one.
    task = emulator.tasks[task_id]

    assert (await poll(client, task_id))["output"]["task_status"] == "PENDING"
    task.created -= 300
    running = await poll(client, task_id)
    assert running["output"]["task_status"] == "RUNNING"
    assert "scheduled_time" in running["output"]
    task.created -= 300
    done = await poll(client, task_id)

    output = done["output"]
    assert (output["task_status"], output["finished"]) == ("SUCCEEDED", True)
    assert done["usage"]["size"] == "1344*768"
    assert done["usage"]["image_count"] == 2
    urls = image_urls(done)
    assert len(urls) == 2
    query = parse_qs(urlsplit(urls[0]).query)
    assert set(query) == {"Expires", "OSSAccessKeyId", "Signature"}
    # The URL goes to the result store without any credentials.
    first = await client.get(urls[0])
    assert (first.status_code, first.headers["content-type"]) == (200, "image/png")
    assert size_of(first.content) == (1344, 768)
    again = await client.get(urls[0])
    assert again.content == first.content
    assert (await client.get(urls[1])).content != first.content
    assert emulator.stats.polls[task_id] == 3
    assert emulator.stats.downloads == 3


@pytest.mark.parametrize(
    ("model", "parameters", "images", "size"),
    [
        ("wan2.7-image", {"size": "1K"}, (), (1024, 1024)),
        ("wan2.7-image", {}, (), (2048, 2048)),  # the default is 2K
        ("wan2.7-image-pro", {"size": "4K"}, (), (4096, 4096)),
        ("wan2.7-image", {"size": "768*768"}, (), (768, 768)),
        ("wan2.7-image", {"size": "1K"}, (data_uri(300, 600),), (720, 1440)),
        ("wan2.7-image", {"size": "1K"}, (data_uri(600, 300), data_uri(300, 600)), (720, 1440)),
    ],
)
async def test_produced_sizes(
    client: httpx.AsyncClient,
    model: str,
    parameters: dict[str, Any],
    images: tuple[str, ...],
    size: tuple[int, int],
) -> None:
    done = await finished(
        client, await task_id_of(client, body(model=model, images=images, **parameters))
    )
    assert done["usage"]["size"] == f"{size[0]}*{size[1]}"


@pytest.mark.parametrize(
    ("payload", "code", "needle"),
    [
        ({}, "BadRequest.EmptyModel", "Model"),
        (body(model="wan9"), "InvalidParameter", "Model not exist"),
        ({"model": "wan2.7-image", "input": {}}, "InvalidParameter", "exactly one message"),
        (body(""), "InvalidParameter", "non-empty"),
        (
            {
                "model": "wan2.7-image",
                "input": {
                    "messages": [{"role": "user", "content": [{"text": "a"}, {"text": "b"}]}]
                },
            },
            "InvalidParameter",
            "exactly one text",
        ),
        (body(images=(data_uri(300, 300),) * 10), "InvalidParameter", "at most 9"),
        (body(images=("https://example.com/a.png",)), "InvalidURL", "data URI"),
        (body(images=("data:image/png;base64,aGVsbG8=",)), "InvalidParameter", "decodable"),
        (body(images=(data_uri(100, 300),)), "InvalidParameter", "240 to 8000"),
        (body(n=5), "InvalidParameter", "between 1 and 4"),
        (body(n=True), "InvalidParameter", "integer"),
        (body(seed=-1), "InvalidParameter", "seed"),
        (body(watermark="no"), "InvalidParameter", "boolean"),
        (body(size="1024x1024"), "InvalidParameter", "width*height"),
        (body(size="512*512"), "InvalidParameter", "between 589824"),
        (body(size="4096*4096"), "InvalidParameter", "between 589824 and 4194304"),
        (body(size="1000*500"), "InvalidParameter", "between"),
        (body(size="3000*300"), "InvalidParameter", "1:8"),
        (body(size="4K"), "InvalidParameter", "4K"),
        (
            body(model="wan2.7-image-pro", images=(data_uri(300, 300),), size="4K"),
            "InvalidParameter",
            "4K",
        ),
    ],
)
async def test_invalid_bodies_are_400(
    client: httpx.AsyncClient,
    emulator: BailianWanEmulator,
    payload: dict[str, Any],
    code: str,
    needle: str,
) -> None:
    response = await submit(client, payload)
    assert response.status_code == 400
    error = response.json()
    assert set(error) == {"request_id", "code", "message"}
    assert error["code"] == code
    assert needle in error["message"]
    # Invalid requests neither consume the fault plan nor create tasks.
    assert emulator.faults.stats.faults.total() == 0
    assert emulator.stats.submits == 0


async def test_auth_and_the_async_header(client: httpx.AsyncClient) -> None:
    wrong = await submit(
        client, body(), {"Authorization": "Bearer nope", "X-DashScope-Async": "enable"}
    )
    assert (wrong.status_code, wrong.json()["code"]) == (401, "InvalidApiKey")
    assert (await submit(client, body(), {"X-DashScope-Async": "enable"})).status_code == 401
    sync = await submit(client, body(), AUTH)
    assert (sync.status_code, sync.json()["code"]) == (403, "AccessDenied")
    task_id = await task_id_of(client, body())
    unauthorized = await client.get(f"{API_PREFIX}/tasks/{task_id}")
    assert unauthorized.status_code == 401
    cancel = await client.post(f"{API_PREFIX}/tasks/{task_id}/cancel")
    assert cancel.status_code == 401


async def test_unknown_task_is_unknown(client: httpx.AsyncClient) -> None:
    answer = await poll(client, "no-such-task")
    assert answer["output"] == {"task_id": "no-such-task", "task_status": "UNKNOWN"}


async def test_only_a_pending_task_can_be_cancelled(
    client: httpx.AsyncClient, emulator: BailianWanEmulator
) -> None:
    emulator.faults.latencies = [30.0, 0.0]
    pending = await task_id_of(client, body())
    done = await task_id_of(client, body())
    await finished(client, done)

    cancelled = await client.post(f"{API_PREFIX}/tasks/{pending}/cancel", headers=AUTH)
    assert cancelled.status_code == 200
    assert (await poll(client, pending))["output"]["task_status"] == "CANCELED"
    too_late = await client.post(f"{API_PREFIX}/tasks/{done}/cancel", headers=AUTH)
    assert (too_late.status_code, too_late.json()["code"]) == (400, "UnsupportedOperation")
    assert emulator.stats.cancels == {pending: 1, done: 1}


async def test_result_urls_are_signed_and_expire(
    client: httpx.AsyncClient, emulator: BailianWanEmulator
) -> None:
    (url,) = image_urls(await finished(client, await task_id_of(client, body())))
    tampered = url.replace("/0.png", "/1.png")
    forged = await client.get(tampered)
    assert forged.status_code == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in forged.text
    unsigned = await client.get(url.split("?")[0])
    assert unsigned.status_code == 403

    emulator.result_ttl_s = -1
    (expired,) = image_urls(await finished(client, await task_id_of(client, body())))
    answer = await client.get(expired)
    assert answer.status_code == 403
    assert "Request has expired" in answer.text

    emulator.tasks.clear()
    gone = await client.get(url)
    assert gone.status_code == 404
    assert "<Code>NoSuchKey</Code>" in gone.text


async def test_submission_fault_shapes(
    client: httpx.AsyncClient, emulator: BailianWanEmulator
) -> None:
    faults = emulator.faults
    faults.push(FaultMode.BAD_REQUEST)
    faults.push(FaultMode.CONTENT_FILTER)
    faults.push(FaultMode.RATE_LIMIT, retry_after=1.5)
    faults.push(FaultMode.RATE_LIMIT)
    faults.push(FaultMode.SERVER_ERROR)

    answers = [await submit(client, body()) for _ in range(5)]

    assert [(a.status_code, a.json()["code"]) for a in answers] == [
        (400, "InvalidParameter"),
        (400, "DataInspectionFailed"),
        (429, "Throttling.RateQuota"),
        (429, "Throttling.RateQuota"),
        (500, "InternalError"),
    ]
    assert answers[2].headers["retry-after"] == "2"
    assert "retry-after" not in answers[3].headers
    assert emulator.stats.submits == 0
    assert faults.stats.completed == 5


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        (FaultMode.CONTENT_FILTER, "DataInspectionFailed"),
        (FaultMode.SERVER_ERROR, "InternalError.Algo"),
        (FaultMode.BAD_REQUEST, "InvalidParameter"),
    ],
)
async def test_failed_task_carries_its_error_in_a_200(
    client: httpx.AsyncClient, emulator: BailianWanEmulator, mode: FaultMode, code: str
) -> None:
    emulator.faults.push(mode, variant=IN_TASK)
    done = await finished(client, await task_id_of(client, body()))
    output = done["output"]
    assert (output["task_status"], output["code"]) == ("FAILED", code)
    assert output["message"]
    assert "choices" not in output


async def test_partial_filter_shapes(
    client: httpx.AsyncClient, emulator: BailianWanEmulator
) -> None:
    emulator.faults.push(FaultMode.CONTENT_FILTER, variant=PARTIAL)
    emulator.faults.push(FaultMode.CONTENT_FILTER, variant=PARTIAL_RESULTS)
    emulator.faults.push(FaultMode.CONTENT_FILTER, variant=PARTIAL)

    current = await finished(client, await task_id_of(client, body(n=4)))
    assert current["output"]["task_status"] == "SUCCEEDED"
    assert len(image_urls(current)) == 3
    assert current["output"]["code"] == "DataInspectionFailed"
    assert current["output"]["task_metrics"] == {"TOTAL": 4, "SUCCEEDED": 3, "FAILED": 1}
    assert current["usage"]["image_count"] == 3

    legacy = (await finished(client, await task_id_of(client, body(n=2))))["output"]
    assert [sorted(r) for r in legacy["results"]] == [["url"], ["code", "message"]]
    assert legacy["results"][1]["code"] == "DataInspectionFailed"

    single = (await finished(client, await task_id_of(client, body(n=1))))["output"]
    assert (single["task_status"], single["code"]) == ("FAILED", "DataInspectionFailed")


async def test_timeout_task_runs_forever(
    client: httpx.AsyncClient, emulator: BailianWanEmulator
) -> None:
    emulator.faults.push(FaultMode.TIMEOUT)
    task_id = await task_id_of(client, body())
    for _ in range(3):
        await asyncio.sleep(0.05)
        assert (await poll(client, task_id))["output"]["task_status"] == "RUNNING"


async def test_timeout_at_submit_hangs_until_the_client_leaves(
    client: httpx.AsyncClient, emulator: BailianWanEmulator
) -> None:
    faults = emulator.faults
    faults.push(FaultMode.TIMEOUT, variant=AT_SUBMIT)
    with pytest.raises(httpx.ReadTimeout):
        await client.post(SUBMIT, json=body(), headers=ASYNC, timeout=0.3)
    stats = await faults.wait_for(lambda s: s.in_flight == 0)
    assert (stats.cancelled, stats.completed) == (1, 0)
    assert emulator.stats.submits == 0


async def test_dropped_connections(
    client: httpx.AsyncClient, emulator: BailianWanEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.faults.push(FaultMode.DROP_CONNECTION)
    emulator.faults.push(FaultMode.DROP_CONNECTION, variant=AT_POLL)
    emulator.faults.push(FaultMode.DROP_CONNECTION, variant=AT_DOWNLOAD)
    with caplog.at_level(logging.INFO):
        with pytest.raises(httpx.RemoteProtocolError):
            await submit(client, body())
        assert emulator.faults.stats.dropped == 1
        assert emulator.stats.submits == 0  # the task was never created

        task_id = await task_id_of(client, body())
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{API_PREFIX}/tasks/{task_id}", headers=AUTH)
        await finished(client, task_id)

        (url,) = image_urls(await finished(client, await task_id_of(client, body(size="1K"))))
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(url)
        assert size_of((await client.get(url)).content) == (1024, 1024)
    # The deliberate drops are not reported as application errors.
    assert not [r for r in caplog.records if r.name.startswith("uvicorn")]


async def test_prompt_directives(client: httpx.AsyncClient) -> None:
    limited = await submit(client, body("x [sandbox:fault=rate_limit] [sandbox:retry_after=3]"))
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    task_id = await task_id_of(
        client, body("x [sandbox:fault=content_filter] [sandbox:variant=task]")
    )
    assert (await finished(client, task_id))["output"]["code"] == "DataInspectionFailed"


async def test_reset_forgets_tasks_and_counters(
    client: httpx.AsyncClient, emulator: BailianWanEmulator
) -> None:
    task_id = await task_id_of(client, body())
    await finished(client, task_id)
    emulator.reset()
    assert (emulator.stats.submits, emulator.stats.total_polls, len(emulator.tasks)) == (0, 0, 0)
    assert emulator.task_status(task_id) == "UNKNOWN"


async def test_settings_point_at_the_api_prefix(emulator: BailianWanEmulator) -> None:
    overrides = emulator.settings_overrides("http://127.0.0.1:1234")
    assert overrides == {
        "bailian_base_url": "http://127.0.0.1:1234/dashscope/api/v1",
        "bailian_api_key": SANDBOX_DASHSCOPE_KEY,
    }
