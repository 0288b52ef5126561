"""A hung upstream call cannot cost the images the other calls returned.

n=4 on FLUX is four calls; one hangs until the deadline. Before, the
upstream wait had the whole deadline: unary ended in DEADLINE_EXCEEDED with
no generation (three paid images lost) and a stream ended after three images
without its record. The upstream wait now ends a slice before the storage
deadline, so the generation completes with three images, a failure entry for
the hung call, and a stored record.
"""

from __future__ import annotations

import asyncio
import contextlib

from server.domain.backends import Backends
from server.domain.catalogue import Catalogue
from server.domain.deadline import Deadline
from server.domain.events import GenerationDone, ImageReady
from server.domain.generation import storage_deadline, upstream_deadline
from server.domain.orchestrator import Orchestrator
from server.domain.ports import ProducedImage, UpstreamCall, UpstreamResult
from server.domain.requests import GenerateRequest
from server.domain.retry import RetryPolicy
from tests.support.fakes import MemoryStore
from tests.support.images import png

CATALOGUE = Catalogue.load()
# Long enough that the three good calls finish on a busy machine; the test
# takes about 80% of it.
DEADLINE_S = 3.0


class OneHangs:
    """Call number `hung` never answers; the others answer at once."""

    def __init__(self, hung: int = 3) -> None:
        self.calls = 0
        self.cancelled = 0
        self._hung = hung

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        number, self.calls = self.calls, self.calls + 1
        if number == self._hung:
            try:
                await asyncio.Event().wait()  # ignores `deadline`, as a stuck client would
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return UpstreamResult(tuple(ProducedImage(png()) for _ in range(call.count)))

    async def aclose(self) -> None:
        pass


def _orchestrator(backend: OneHangs, store: MemoryStore) -> Orchestrator:
    return Orchestrator(
        CATALOGUE,
        Backends({"azure_flux": backend}),
        store,
        storage_retry=RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.002),
        default_deadline_s=600,
    )


REQUEST = GenerateRequest(model="azure/flux-kontext-pro", prompt="a fox", n=4)


async def test_unary_completes_with_the_images_that_succeeded_and_stores_its_record() -> None:
    backend, store = OneHangs(), MemoryStore()
    orchestrator = _orchestrator(backend, store)
    deadline = Deadline.after(DEADLINE_S)

    record = await orchestrator.run(REQUEST, deadline)

    assert not deadline.expired()
    assert len(record.images) == 3
    assert [(f.image_count, f.reason) for f in record.failures] == [(1, "UPSTREAM_TIMEOUT")]
    assert backend.cancelled == 1
    stored = await orchestrator.get_generation(record.generation_id)
    assert [(f.image_count, f.reason) for f in stored.failures] == [(1, "UPSTREAM_TIMEOUT")]
    assert len(stored.images) == 3


async def test_stream_ends_with_its_record_after_the_images() -> None:
    backend, store = OneHangs(), MemoryStore()
    orchestrator = _orchestrator(backend, store)
    events = orchestrator.stream(REQUEST, Deadline.after(DEADLINE_S))
    async with contextlib.aclosing(events):
        kinds = [type(event) async for event in events]
    assert kinds == [ImageReady, ImageReady, ImageReady, GenerationDone]


def test_the_upstream_wait_ends_before_the_storage_deadline() -> None:
    for seconds in (3.0, 60.0, 600.0):
        deadline = Deadline.after(seconds)
        upstream, storage = upstream_deadline(deadline), storage_deadline(deadline)
        assert upstream.at is not None and storage.at is not None and deadline.at is not None
        assert upstream.at < storage.at < deadline.at
        # The slices stay small: most of the deadline is the upstream's.
        assert deadline.at - upstream.at <= min(15.0, 0.2 * seconds)
    assert upstream_deadline(Deadline.none()) == Deadline.none()
