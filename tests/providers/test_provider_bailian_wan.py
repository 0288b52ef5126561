"""BailianWanBackend against the DashScope emulator, over real sockets: what only
Wan does (tasks, polling, result downloads). The failure behaviour every
backend shares is in test_backend_contract.py."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from server.domain.catalogue import Catalogue, ModelSpec
from server.domain.deadline import Deadline
from server.domain.errors import (
    CapabilityNotSupported,
    ContentRejected,
    ImageServiceError,
    InvalidArgument,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.domain.ports import UpstreamCall
from server.domain.requests import Operation, Size
from server.providers.bailian_wan.backend import BailianWanBackend
from server.providers.bailian_wan.request import request_body, upstream_size, wan_size
from server.providers.bailian_wan.response import (
    TaskState,
    parse_submission,
    parse_task,
    task_result,
)
from server.sandbox.bailian_wan import (
    AT_DOWNLOAD,
    AT_POLL,
    AT_SUBMIT,
    CANCELED,
    IN_TASK,
    PARTIAL,
    PARTIAL_RESULTS,
    BailianWanEmulator,
)
from server.sandbox.faults import FaultMode, FaultPlan
from server.sandbox.render import render_png
from server.sandbox.server import SandboxServer
from tests.providers.backends import POLL_MAX_S
from tests.providers.backends import bailian_wan as make_backend
from tests.providers.conftest import FAST_RETRY, backend_fixture
from tests.support.images import size_of

CATALOGUE = Catalogue.load()
WAN = CATALOGUE.get("bailian/wan2.7-image")
WAN_PRO = CATALOGUE.get("bailian/wan2.7-image-pro")
SQUARE = Size(1024, 1024)


@pytest.fixture
def emulator(sandbox: SandboxServer) -> BailianWanEmulator:
    return sandbox.bailian_wan


@pytest.fixture
def faults(emulator: BailianWanEmulator) -> FaultPlan:
    return emulator.faults


backend = backend_fixture(make_backend)


def call(
    model: ModelSpec = WAN,
    size: Size | None = SQUARE,
    *,
    count: int = 1,
    prompt: str = "a red fox in an autumn forest",
    operation: Operation = Operation.GENERATE,
    images: tuple[bytes, ...] = (),
    mask: bytes | None = None,
    seed: int | None = None,
) -> UpstreamCall:
    return UpstreamCall(
        model=model,
        prompt=prompt,
        size=size,
        count=count,
        operation=operation,
        images=images,
        mask=mask,
        seed=seed,
    )


def last_body(emulator: BailianWanEmulator) -> dict[str, Any]:
    return emulator.received[-1].body


# --- generation and sizes ------------------------------------------------------


@pytest.mark.parametrize("model", [WAN, WAN_PRO], ids=lambda m: m.name)
@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (Size(1024, 1024), (1024, 1024)),
        (Size(1792, 1024), (1344, 768)),
        (Size(1024, 1792), (768, 1344)),
    ],
    ids=str,
)
async def test_generate_every_catalogue_size(
    backend: BailianWanBackend,
    emulator: BailianWanEmulator,
    model: ModelSpec,
    size: Size,
    expected: tuple[int, int],
) -> None:
    assert size in model.sizes
    result = await backend.run(call(model, size, seed=7), Deadline.after(10))

    assert len(result.images) == 1
    assert result.filtered == 0
    assert result.images[0].mime_type == "image/png"
    assert size_of(result.images[0].data) == expected
    received = emulator.received[-1]
    assert received.headers["x-dashscope-async"] == "enable"
    assert received.body["model"] == model.upstream_id
    assert received.body["parameters"] == {
        "n": 1,
        "size": f"{expected[0]}*{expected[1]}",
        "watermark": False,
        "seed": 7,
    }
    assert received.body["input"]["messages"] == [
        {"role": "user", "content": [{"text": "a red fox in an autumn forest"}]}
    ]


@pytest.mark.parametrize("model", [WAN, WAN_PRO], ids=lambda m: m.name)
async def test_four_images_are_one_task(
    backend: BailianWanBackend, emulator: BailianWanEmulator, model: ModelSpec
) -> None:
    result = await backend.run(call(model, count=4), Deadline.after(10))

    assert [size_of(image.data) for image in result.images] == [(1024, 1024)] * 4
    assert len({image.data for image in result.images}) == 4  # four distinct images
    assert emulator.stats.submits == 1
    assert emulator.faults.stats.received == 1
    assert last_body(emulator)["parameters"]["n"] == 4
    assert emulator.stats.downloads == 4
    # Downloads go to signed URLs; the API key never travels with them.
    assert emulator.stats.downloads_with_credentials == 0


def test_size_mapping() -> None:
    assert wan_size(Size(1024, 1024)) == Size(1024, 1024)
    assert wan_size(Size(1792, 1024)) == Size(1344, 768)
    assert wan_size(Size(1024, 1792)) == Size(768, 1344)
    assert wan_size(Size(2048, 2048)) == Size(1024, 1024)
    # Below the upstream's 768*768 minimum: scaled up, shape kept.
    assert wan_size(Size(512, 512)) == Size(768, 768)
    for size in (Size(1792, 1024), Size(640, 480), Size(3000, 1000), Size(333, 777)):
        fitted = wan_size(size)
        assert 768 * 768 <= fitted.pixels <= 1024 * 1024
        assert fitted.width % 16 == 0 and fitted.height % 16 == 0
        assert fitted.aspect == pytest.approx(size.aspect, rel=0.05)
    assert upstream_size(Size(1792, 1024)) == "1344*768"
    assert upstream_size(None) == "1K"


def test_seed_wraps_into_the_upstream_range() -> None:
    assert request_body(call(seed=2**32 - 1))["parameters"]["seed"] == 2**31 - 1
    assert request_body(call(seed=5))["parameters"]["seed"] == 5
    assert "seed" not in request_body(call())["parameters"]


async def test_polling_backs_off(
    sandbox: SandboxServer, emulator: BailianWanEmulator, faults: FaultPlan
) -> None:
    backend = make_backend(sandbox, poll_initial_s=0.03, poll_max_s=0.2)
    faults.latencies = [0.6]
    try:
        await backend.run(call(), Deadline.after(10))
    finally:
        await backend.aclose()
    # 30, 45, 68, 101, 152, 200 ms...: a fixed 30 ms would poll 20 times.
    assert 3 <= emulator.stats.total_polls <= 9


# --- prompt edits -------------------------------------------------------------


async def test_prompt_edit_sends_data_uris_and_keeps_the_input_shape(
    backend: BailianWanBackend, emulator: BailianWanEmulator
) -> None:
    first, second = render_png(640, 480, "first"), render_png(480, 640, "second")
    edit = call(WAN_PRO, None, operation=Operation.PROMPT_EDIT, images=(first, second))

    result = await backend.run(edit, Deadline.after(10))

    width, height = size_of(result.images[0].data)
    # "1K" renders about a megapixel in the (last) input's proportions.
    assert width / height == pytest.approx(480 / 640, rel=0.03)
    assert 0.8e6 < width * height <= 1024 * 1024
    body = last_body(emulator)
    assert body["parameters"]["size"] == "1K"
    content = body["input"]["messages"][0]["content"]
    assert content[0] == {"text": "a red fox in an autumn forest"}
    for item, source in zip(content[1:], (first, second), strict=True):
        prefix = "data:image/png;base64,"
        assert item["image"].startswith(prefix)
        assert base64.b64decode(item["image"][len(prefix) :]) == source


async def test_prompt_edit_with_a_size_and_four_results(
    backend: BailianWanBackend, emulator: BailianWanEmulator
) -> None:
    edit = call(
        WAN,
        Size(1792, 1024),
        count=4,
        operation=Operation.PROMPT_EDIT,
        images=(render_png(800, 800, "in"),),
    )
    result = await backend.run(edit, Deadline.after(10))
    assert [size_of(image.data) for image in result.images] == [(1344, 768)] * 4
    assert emulator.stats.submits == 1


async def test_edits_the_upstream_cannot_do_are_refused_locally(
    backend: BailianWanBackend, faults: FaultPlan
) -> None:
    image = render_png(300, 300, "in")
    with pytest.raises(CapabilityNotSupported):
        await backend.run(
            call(WAN, None, operation=Operation.INPAINT, images=(image,), mask=image),
            Deadline.after(5),
        )
    with pytest.raises(InvalidArgument) as caught:
        await backend.run(
            call(WAN, None, operation=Operation.PROMPT_EDIT, images=(image,) * 10),
            Deadline.after(5),
        )
    assert caught.value.violations[0].field == "images"
    assert faults.stats.received == 0


# --- errors -------------------------------------------------------------------


async def test_bad_request_inside_a_failed_task(
    backend: BailianWanBackend, emulator: BailianWanEmulator
) -> None:
    emulator.faults.push(FaultMode.BAD_REQUEST, variant=IN_TASK)
    with pytest.raises(UpstreamRejected) as caught:
        await backend.run(call(), Deadline.after(5))
    assert caught.value.violations[0].field == "images"  # the message names the image
    assert "upstream_status" not in caught.value.metadata  # it came in a 200
    assert emulator.stats.submits == 1


@pytest.mark.parametrize(("variant", "tasks"), [(AT_SUBMIT, 0), (IN_TASK, 1)])
async def test_a_refused_task_downloads_nothing(
    backend: BailianWanBackend, emulator: BailianWanEmulator, variant: str, tasks: int
) -> None:
    emulator.faults.push(FaultMode.CONTENT_FILTER, variant=variant)
    with pytest.raises(ContentRejected):
        await backend.run(call(count=4), Deadline.after(5))
    assert (emulator.stats.submits, emulator.stats.downloads) == (tasks, 0)


@pytest.mark.parametrize("variant", [PARTIAL, PARTIAL_RESULTS])
async def test_partial_filter_returns_the_images_that_passed(
    backend: BailianWanBackend, emulator: BailianWanEmulator, variant: str
) -> None:
    emulator.faults.push(FaultMode.CONTENT_FILTER, variant=variant)
    result = await backend.run(call(count=4), Deadline.after(5))
    assert len(result.images) == 3
    assert result.filtered == 1


async def test_partial_filter_of_the_only_image_is_content_rejected(
    backend: BailianWanBackend, emulator: BailianWanEmulator
) -> None:
    emulator.faults.push(FaultMode.CONTENT_FILTER, variant=PARTIAL)
    with pytest.raises(ContentRejected):
        await backend.run(call(count=1), Deadline.after(5))


async def test_failed_task_is_unavailable_and_not_resubmitted(
    backend: BailianWanBackend, emulator: BailianWanEmulator
) -> None:
    # A new task would be a new paid minute or two: the caller decides.
    emulator.faults.push(FaultMode.SERVER_ERROR, variant=IN_TASK)
    with pytest.raises(UpstreamUnavailable) as caught:
        await backend.run(call(), Deadline.after(10))
    assert caught.value.metadata["upstream_code"] == "InternalError.Algo"
    assert emulator.stats.submits == 1


async def test_a_task_that_never_finishes_times_out_at_the_deadline(
    backend: BailianWanBackend, emulator: BailianWanEmulator
) -> None:
    emulator.faults.push(FaultMode.TIMEOUT)
    started = time.monotonic()
    # Long enough that a busy machine still submits well before the deadline,
    # so the timeout is the polling's, not the submission's.
    with pytest.raises(UpstreamTimeout) as caught:
        await backend.run(call(), Deadline.after(1.5))
    assert 1.45 <= time.monotonic() - started < 3
    (task_id,) = emulator.tasks
    assert caught.value.metadata["task_id"] == task_id
    polls = emulator.stats.total_polls
    assert polls >= 5
    await asyncio.sleep(0.3)
    assert emulator.stats.total_polls == polls  # polling stopped
    # It was RUNNING, which DashScope cannot cancel: no pointless request.
    assert emulator.stats.cancels.total() == 0


async def test_a_task_still_pending_at_the_deadline_is_cancelled_upstream(
    backend: BailianWanBackend, emulator: BailianWanEmulator
) -> None:
    emulator.faults.latencies = [30.0]  # PENDING for the first 6 s
    with pytest.raises(UpstreamTimeout):
        await backend.run(call(), Deadline.after(0.3))
    (task_id,) = emulator.tasks
    await emulator.faults.wait_for(lambda _: emulator.stats.cancels[task_id] == 1)
    assert emulator.task_status(task_id) == CANCELED


@pytest.mark.parametrize(
    ("mode", "variant"),
    [
        (FaultMode.SERVER_ERROR, ""),
        (FaultMode.DROP_CONNECTION, AT_SUBMIT),
        (FaultMode.DROP_CONNECTION, AT_POLL),
        (FaultMode.DROP_CONNECTION, AT_DOWNLOAD),
    ],
)
async def test_a_retried_request_still_makes_one_task(
    backend: BailianWanBackend, emulator: BailianWanEmulator, mode: FaultMode, variant: str
) -> None:
    # What is retried is the failed submission, poll or download, never the task.
    emulator.faults.push(mode, variant=variant)
    result = await backend.run(call(count=2), Deadline.after(10))
    assert len(result.images) == 2
    assert (emulator.stats.submits, emulator.stats.downloads) == (1, 2)


async def test_a_task_the_upstream_forgot_is_unavailable(
    backend: BailianWanBackend, emulator: BailianWanEmulator
) -> None:
    emulator.faults.latencies = [5.0]
    run = asyncio.create_task(backend.run(call(), Deadline.after(10)))
    await emulator.faults.wait_for(lambda _: emulator.stats.total_polls >= 1)
    emulator.tasks.clear()  # expired: polls now answer UNKNOWN
    with pytest.raises(UpstreamUnavailable) as caught:
        await run
    assert "no longer knows" in caught.value.message


async def test_an_expired_result_url_is_unavailable_not_an_auth_failure(
    backend: BailianWanBackend, emulator: BailianWanEmulator
) -> None:
    emulator.result_ttl_s = -60
    with pytest.raises(UpstreamUnavailable) as caught:
        await backend.run(call(), Deadline.after(10))
    assert caught.value.metadata["upstream_status"] == "403"
    assert "IMAGE_SERVICE_BAILIAN_API_KEY" not in caught.value.message


async def test_cancelling_the_call_stops_polling_and_cancels_the_task(
    backend: BailianWanBackend, emulator: BailianWanEmulator
) -> None:
    emulator.faults.latencies = [30.0]
    run = asyncio.create_task(backend.run(call(count=4), Deadline.after(60)))
    await emulator.faults.wait_for(lambda _: emulator.stats.total_polls >= 3)

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    (task_id,) = emulator.tasks
    polls = emulator.stats.polls[task_id]
    await emulator.faults.wait_for(lambda _: emulator.stats.cancels[task_id] == 1)
    await asyncio.sleep(10 * POLL_MAX_S)
    assert emulator.stats.polls[task_id] == polls
    assert emulator.task_status(task_id) == CANCELED


async def test_aclose_lets_a_pending_cancellation_finish(
    sandbox: SandboxServer, emulator: BailianWanEmulator
) -> None:
    backend = make_backend(sandbox)
    emulator.faults.latencies = [30.0]
    run = asyncio.create_task(backend.run(call(), Deadline.after(60)))
    await emulator.faults.wait_for(lambda _: emulator.stats.total_polls >= 1)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await backend.aclose()
    (task_id,) = emulator.tasks
    assert emulator.stats.cancels[task_id] == 1


# --- response parsing (bodies DashScope sends that the emulator does not) --------


def response(body: object, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status, json=body, request=httpx.Request("GET", "https://dashscope.test/api/v1/tasks/t")
    )


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("DataInspectionFailed", ContentRejected),
        ("Throttling.AllocationQuota", RateLimited),
        ("InvalidApiKey", UpstreamAuthFailed),
        ("Arrearage", UpstreamAuthFailed),
        ("InvalidParameter", UpstreamRejected),
        ("InternalError", UpstreamUnavailable),
        ("SomethingNew", UpstreamUnavailable),
    ],
)
def test_an_error_inside_a_200_is_detected(code: str, error: type[ImageServiceError]) -> None:
    body = {"request_id": "r", "code": code, "message": "whatever the upstream says"}
    with pytest.raises(error) as caught:
        parse_task(response(body))
    assert "whatever" not in caught.value.message
    with pytest.raises(error):
        parse_submission(response(body))


def test_a_submission_that_failed_at_once_raises_its_error() -> None:
    body = {
        "output": {
            "task_id": "t",
            "task_status": "FAILED",
            "code": "DataInspectionFailed",
            "message": "Input data may contain inappropriate content.",
        }
    }
    with pytest.raises(ContentRejected):
        parse_submission(response(body))


def state(status: str, **output: object) -> TaskState:
    return TaskState("t", status, {"task_id": "t", "task_status": status, **output})


def image(url: str) -> dict[str, object]:
    return {"type": "image", "image": url}


def test_task_result_shapes() -> None:
    one_choice = state(
        "SUCCEEDED", choices=[{"message": {"content": [image("https://a"), image("https://b")]}}]
    )
    assert task_result(one_choice, 2).urls == ("https://a", "https://b")
    per_choice = state(
        "SUCCEEDED",
        choices=[
            {"message": {"content": [image("https://a")]}},
            {"finish_reason": "error", "code": "DataInspectionFailed"},
            {"finish_reason": "error", "code": "InternalError.Algo"},
        ],
    )
    result = task_result(per_choice, 3)
    assert (result.urls, result.failed, result.filtered) == (("https://a",), 2, 1)
    short = state("SUCCEEDED", choices=[{"message": {"content": [image("https://a")]}}])
    assert (task_result(short, 4).failed, task_result(short, 4).filtered) == (3, 0)
    legacy_other = state("SUCCEEDED", results=[{"url": "https://a"}, {"code": "InternalError"}])
    assert task_result(legacy_other, 2).filtered == 0


@pytest.mark.parametrize(
    ("finished", "error"),
    [
        (state("FAILED", code="DataInspectionFailed"), ContentRejected),
        (state("FAILED", code="InternalError.Algo"), UpstreamUnavailable),
        (state("FAILED"), UpstreamUnavailable),
        (state("CANCELED"), UpstreamUnavailable),
        (state("UNKNOWN"), UpstreamUnavailable),
        (state("SUCCEEDED", choices=[]), UpstreamUnavailable),
        (state("SUCCEEDED", results=[{"code": "DataInspectionFailed"}]), ContentRejected),
        (state("SUCCEEDED", code="Throttling", task_metrics={"FAILED": 1}), RateLimited),
    ],
)
def test_task_result_errors(finished: TaskState, error: type[ImageServiceError]) -> None:
    with pytest.raises(error):
        task_result(finished, 1)


def test_malformed_task_bodies_are_unavailable() -> None:
    for body in ([], {"output": {"task_status": "PENDING"}}, {"output": {"task_id": "t"}}):
        with pytest.raises(UpstreamUnavailable):
            parse_task(response(body))


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        BailianWanBackend(api_key=SecretStr("k"), base_url="dashscope.aliyuncs.com")
    with pytest.raises(ValueError):
        BailianWanBackend(
            api_key=SecretStr("k"),
            base_url="https://dashscope.test",
            poll_initial_s=2,
            poll_max_s=1,
        )


async def test_a_poll_cut_off_by_the_deadline_still_names_the_task() -> None:
    """The deadline can expire while a poll request is on the wire; the
    transport's timeout must carry the task id too (a narrow fake upstream:
    the emulator cannot hold a single poll open on demand)."""

    async def upstream(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(
                200,
                json={"request_id": "r", "output": {"task_id": "t-1", "task_status": "RUNNING"}},
            )
        await asyncio.sleep(30)  # the poll never answers
        raise AssertionError("unreachable")

    backend = BailianWanBackend(
        api_key=SecretStr("k"),
        base_url="http://dashscope.test/api/v1",
        poll_initial_s=0.01,
        retry=FAST_RETRY,
        transport=httpx.MockTransport(upstream),
    )
    try:
        with pytest.raises(UpstreamTimeout) as caught:
            await backend.run(call(), Deadline.after(0.5))
    finally:
        await backend.aclose()
    assert caught.value.metadata["task_id"] == "t-1"
