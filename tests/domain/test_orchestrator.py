"""Orchestration edge cases, driven by narrow fakes (see tests/support/fakes.py).

The same behaviours are exercised end to end over gRPC against the real
emulators in tests/rpc; these pin down the precise bookkeeping.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import Any

import pytest

from server.domain import imaging
from server.domain.backends import Backends
from server.domain.catalogue import Catalogue, RetiredPolicy
from server.domain.deadline import Deadline
from server.domain.errors import (
    BackendNotConfigured,
    ContentRejected,
    RateLimited,
    RequestIdConflict,
)
from server.domain.events import GenerationDone, ImageReady
from server.domain.orchestrator import Orchestrator
from server.domain.ports import ProducedImage, UpstreamCall, UpstreamResult
from server.domain.requests import EditRequest, GenerateRequest, Operation, ResponseFormat
from server.domain.retry import RetryPolicy
from tests.support.fakes import MemoryStore, ScriptedBackend
from tests.support.images import alpha_mask, png

# Imagen is pinned so that it still batches 4 images per call (its default
# is routing to a Gemini successor that makes 1).
CATALOGUE = Catalogue.load(policies={"google/imagen-4.0": RetiredPolicy.PIN})
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)


def make(backend: ScriptedBackend, store: MemoryStore | None = None) -> Orchestrator:
    return Orchestrator(
        CATALOGUE,
        Backends({"azure_flux": backend, "vertex_imagen": backend}),
        store or MemoryStore(),
        storage_retry=FAST_RETRY,
        default_deadline_s=30,
    )


def request(**changes: object) -> GenerateRequest:
    base: dict[str, object] = {"model": "azure/flux-kontext-pro", "prompt": "a fox", "n": 1}
    return GenerateRequest(**{**base, **changes})  # type: ignore[arg-type]


async def test_n_fans_out_by_images_per_call_with_distinct_seeds() -> None:
    backend = ScriptedBackend()
    record = await make(backend).run(request(n=4, seed=7), Deadline.none())
    assert [c.count for c in backend.calls] == [1, 1, 1, 1]
    assert sorted(c.seed for c in backend.calls if c.seed is not None) == [7, 8, 9, 10]
    assert [i.index for i in record.images] == [0, 1, 2, 3]
    assert record.cost == Decimal("0.20")

    batching = ScriptedBackend()
    record = await make(batching).run(request(model="google/imagen-4.0", n=4), Deadline.none())
    assert [c.count for c in batching.calls] == [4]
    assert len(record.images) == 4


async def test_stream_yields_in_finish_order_then_the_record() -> None:
    # The calls finish in the order [1, 3, 2, 0], each released by the test
    # once the previous image is out (not timed, so a busy machine cannot
    # reorder them).
    gates = [asyncio.Event() for _ in range(4)]
    stream = make(ScriptedBackend(gates=gates)).stream(request(n=4), Deadline.none())
    events = []
    for index in (1, 3, 2, 0):
        gates[index].set()
        events.append(await anext(stream))
    events += [e async for e in stream]
    assert [e.image.index for e in events if isinstance(e, ImageReady)] == [1, 3, 2, 0]
    assert isinstance(events[-1], GenerationDone)
    assert all(i.data is None for i in events[-1].record.images)


async def test_partial_failure_keeps_the_images_that_succeeded() -> None:
    def script(call: UpstreamCall, i: int) -> UpstreamResult:
        if i == 1:
            raise RateLimited("slow down", retry_after=3)
        return UpstreamResult((ProducedImage(png()),))

    record = await make(ScriptedBackend(script)).run(request(n=3), Deadline.none())
    assert len(record.images) == 2
    assert [(f.image_count, f.reason) for f in record.failures] == [(1, "UPSTREAM_RATE_LIMITED")]
    assert record.cost == Decimal("0.10")


async def test_filtered_images_are_counted_and_all_filtered_is_a_safety_error() -> None:
    def some(call: UpstreamCall, i: int) -> UpstreamResult:
        return UpstreamResult((ProducedImage(png()),), filtered=3)

    record = await make(ScriptedBackend(some)).run(
        request(model="google/imagen-4.0", n=4), Deadline.none()
    )
    assert (len(record.images), record.filtered_count) == (1, 3)
    assert record.failures[0].reason == "CONTENT_POLICY_VIOLATION"

    def none(call: UpstreamCall, i: int) -> UpstreamResult:
        return UpstreamResult((), filtered=call.count)

    with pytest.raises(ContentRejected):
        await make(ScriptedBackend(none)).run(request(model="google/imagen-4.0"), Deadline.none())


async def test_safety_error_wins_when_nothing_was_produced() -> None:
    def script(call: UpstreamCall, i: int) -> UpstreamResult:
        if i == 0:
            raise RateLimited("slow down")
        raise ContentRejected("refused")

    with pytest.raises(ContentRejected):
        await make(ScriptedBackend(script)).run(request(n=2), Deadline.none())


async def test_storage_hiccups_are_retried() -> None:
    store = MemoryStore()
    store.failing_writes = 2
    record = await make(ScriptedBackend(), store).run(request(), Deadline.none())
    assert record.images[0].stored
    assert record.images[0].key in store.objects


async def test_storage_outage_returns_paid_images_inline() -> None:
    store = MemoryStore()
    store.down = True
    record = await make(ScriptedBackend(), store).run(request(n=2), Deadline.none())
    assert [(i.stored, i.url, i.data is not None) for i in record.images] == [
        (False, "", True),
        (False, "", True),
    ]


async def test_inline_format_carries_bytes_and_url() -> None:
    record = await make(ScriptedBackend()).run(
        request(response_format=ResponseFormat.INLINE), Deadline.none()
    )
    image = record.images[0]
    assert image.data == png() and image.url.startswith("https://media.test/images/gen-")


async def test_request_id_replays_without_paying_twice() -> None:
    backend = ScriptedBackend()
    orchestrator = make(backend)
    first = await orchestrator.run(request(request_id="r-1"), Deadline.none())
    again = await orchestrator.run(
        request(request_id="r-1", response_format=ResponseFormat.INLINE), Deadline.none()
    )
    assert len(backend.calls) == 1
    assert again.generation_id == first.generation_id
    assert again.images[0].data == png()
    with pytest.raises(RequestIdConflict):
        await orchestrator.run(request(request_id="r-1", prompt="other"), Deadline.none())


async def test_concurrent_retries_with_one_request_id_pay_once() -> None:
    backend = ScriptedBackend(delays=[0.1])
    orchestrator = make(backend)
    a, b = await asyncio.gather(
        orchestrator.run(request(request_id="same"), Deadline.none()),
        orchestrator.run(request(request_id="same"), Deadline.none()),
    )
    assert a.generation_id == b.generation_id
    assert len(backend.calls) == 1


async def test_closing_the_stream_cancels_upstream_calls() -> None:
    backend = ScriptedBackend(delays=[0.01, 5, 5, 5])
    stream = make(backend).stream(request(n=4), Deadline.none())
    first = await anext(stream)
    assert isinstance(first, ImageReady)
    await stream.aclose()
    assert backend.cancelled == 3


async def test_unconfigured_backend_names_the_setting() -> None:
    orchestrator = Orchestrator(
        CATALOGUE,
        Backends({}, {"azure_flux": "IMAGE_SERVICE_AZURE_FLUX_API_KEY"}),
        MemoryStore(),
        storage_retry=FAST_RETRY,
        default_deadline_s=30,
    )
    with pytest.raises(BackendNotConfigured) as caught:
        await orchestrator.run(request(), Deadline.none())
    assert caught.value.metadata["setting"] == "IMAGE_SERVICE_AZURE_FLUX_API_KEY"
    listing = {m.spec.name: m.configured for m in orchestrator.list_models()}
    assert listing["azure/flux-kontext-pro"] is False


async def test_pillow_never_runs_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow may inflate PNG text and ICC chunks while opening: every open
    # (the caller's image, the mask) belongs in a worker thread. The produced
    # image is measured on the loop, from its header alone, without Pillow.
    opened_on: list[int] = []
    real_open = imaging.Image.open

    def spying_open(*args: Any, **kwargs: Any) -> Any:
        opened_on.append(threading.get_ident())
        return real_open(*args, **kwargs)

    monkeypatch.setattr(imaging.Image, "open", spying_open)
    backend = ScriptedBackend(lambda call, i: UpstreamResult((ProducedImage(png(48, 32)),)))
    edit = EditRequest(
        model="bedrock/stability-inpaint",
        prompt="a hat",
        images=(png(64, 64),),
        mask=alpha_mask(64, 64),
        operation=Operation.INPAINT,
    )
    record = await Orchestrator(
        CATALOGUE,
        Backends({"bedrock_stability": backend}),
        MemoryStore(),
        storage_retry=FAST_RETRY,
        default_deadline_s=30,
    ).run(edit, Deadline.none())

    assert [(i.width, i.height) for i in record.images] == [(48, 32)]
    assert len(opened_on) >= 2  # the input image and the mask
    assert threading.get_ident() not in opened_on
    # The backend received the converted mask, not the caller's bytes.
    assert backend.calls[0].mask is not None and backend.calls[0].mask != edit.mask
