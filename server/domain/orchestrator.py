"""The orchestration: validate, replay or fan out, store, record.

`Orchestrator.stream` is the one code path: the streaming RPCs relay its
events, the unary RPCs drain it (`Orchestrator.run`). For n > 1 it starts as
many concurrent upstream calls as the model's images-per-call requires
(call_plan.py) and yields each image the moment it is stored, so the first
image arrives when the fastest call finishes. Every image an upstream
returned reaches the caller: stored with a URL, or inline and flagged not
stored if storage keeps failing. When some calls fail and others succeed,
the generation completes with the images that succeeded and says why the
rest are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import replace
from typing import TypeVar

from server.domain.backends import Backends, ModelListing
from server.domain.call_plan import (
    CallOutcome,
    PlannedCall,
    failures,
    most_telling_error,
    plan_calls,
    seed_warnings,
)
from server.domain.callers import Caller, current_caller
from server.domain.catalogue import Catalogue, Resolution
from server.domain.deadline import Deadline
from server.domain.errors import (
    GenerationNotFound,
    ImageServiceError,
    ModelNotAllowed,
    RequestIdConflict,
    UpstreamTimeout,
)
from server.domain.events import GenerationDone, ImageReady, StreamEvent
from server.domain.generation import Generation
from server.domain.generation_ids import check_generation_id
from server.domain.idempotency import RequestLocks, fingerprint
from server.domain.imaging import EXTENSION_BY_MIME, convert, measure, sniff_mime_type
from server.domain.output_options import OutputPlan, UnsupportedPolicy, plan_output
from server.domain.ports import (
    BlobStore,
    ImageBackend,
    ProducedImage,
    RequestLeases,
    UsageLedger,
)
from server.domain.pricing import generation_cost
from server.domain.records import (
    DeliveredImage,
    GenerationRecord,
    RecordStore,
    put_within,
)
from server.domain.requests import AnyRequest, ResponseFormat
from server.domain.retry import RetryPolicy
from server.domain.telemetry import NO_TELEMETRY, Telemetry
from server.domain.usage import Unmetered
from server.domain.validation import ValidRequest, check_model_name, validate_off_loop

log = logging.getLogger(__name__)

T = TypeVar("T")


async def _within(work: Awaitable[T], deadline: Deadline, backend: str) -> T:
    """`work`, cut off at `deadline` as `UpstreamTimeout`.

    Backends honour the deadline they are given, but one that hangs (an
    upstream that never answers, a client that ignores its timeout) must not
    take the time reserved for storing what the other calls returned.
    """
    remaining = deadline.remaining()
    try:
        async with asyncio.timeout(remaining):
            return await work
    except TimeoutError:
        raise UpstreamTimeout(
            "The upstream did not answer in time.", metadata={"upstream": backend}
        ) from None


class Orchestrator:
    """Runs generations and edits; see the module docstring."""

    def __init__(
        self,
        catalogue: Catalogue,
        backends: Backends,
        store: BlobStore,
        *,
        storage_retry: RetryPolicy,
        default_deadline_s: float,
        record_store: BlobStore | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
        unsupported_parameters: UnsupportedPolicy = UnsupportedPolicy.REPORT,
        usage: UsageLedger | None = None,
        leases: RequestLeases | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._unsupported = unsupported_parameters
        self._telemetry = telemetry
        self._backends = backends
        self._store = store
        self._storage_retry = storage_retry
        # Records (prompts, request ids, costs) may live apart from the
        # images, which a public bucket serves to anyone holding a URL.
        self._records = RecordStore(record_store or store, storage_retry)
        self._default_deadline_s = default_deadline_s
        self._usage: UsageLedger = usage or Unmetered()
        self._leases: RequestLeases = leases or RequestLocks()

    def list_models(self) -> list[ModelListing]:
        listings = []
        for spec in self._catalogue:
            serving = self._catalogue.routes_to(spec) or spec
            listings.append(
                ModelListing(
                    spec,
                    self._backends.is_configured(serving.backend),
                    serving.name if serving is not spec else "",
                )
            )
        return listings

    async def get_generation(self, generation_id: str) -> GenerationRecord:
        check_generation_id(generation_id)
        record = await self._records.get(generation_id)
        # Another key's generation does not exist for this caller: NOT_FOUND,
        # exactly as for an unknown id, so ids cannot be probed.
        if record is None or not _visible_to(current_caller(), record):
            raise GenerationNotFound(
                f"No generation {generation_id!r}.", metadata={"generation_id": generation_id}
            )
        return record

    async def run(self, request: AnyRequest, deadline: Deadline) -> GenerationRecord:
        """Drain `stream`: the record, with images carrying inline data if any."""
        images: list[DeliveredImage] = []
        async with contextlib.aclosing(self.stream(request, deadline)) as events:
            async for event in events:
                if isinstance(event, ImageReady):
                    images.append(event.image)
                else:
                    record = event.record
                    return replace(record, images=tuple(sorted(images, key=lambda i: i.index)))
        raise AssertionError("stream ended without a record")

    async def stream(
        self, request: AnyRequest, deadline: Deadline
    ) -> AsyncGenerator[StreamEvent, None]:
        """Validate `request`, run it (or replay it) and yield its events.

        Runs on behalf of `current_caller()`: the model must be one its key
        may use, a new generation must fit its quotas, and request ids are
        its own (another key's equal request id is another request).
        """
        caller = current_caller()
        check_model_name(request.model)
        # A retired model is routed, pinned or refused here (catalogue.py).
        resolution = self._catalogue.resolve(request.model)
        spec = resolution.serving
        # Both the name asked for and the model that would serve it (a retired
        # name routes to its successor) must be among the key's models.
        for name in dict.fromkeys((request.model, spec.name)):
            if not caller.may_use(name):
                raise ModelNotAllowed(
                    f"This API key may not use {name}.",
                    metadata={"model": name, "key_id": caller.key_id},
                )
        valid = await validate_off_loop(request, spec)
        # OpenAI's output parameters: honoured, reported or refused, up front.
        plan = plan_output(spec.name, valid.operation, request.output, self._unsupported)
        backend = self._backends.get(spec)
        deadline = deadline.earliest(Deadline.after(self._default_deadline_s))
        digest = fingerprint(request)
        if not request.request_id:
            await self._admit(caller, valid)
            events = self._generate(
                request, valid, resolution, plan, backend, deadline, digest, caller
            )
            # `async for` alone would leave the inner generator suspended when
            # the caller goes away; aclosing runs its cleanup (cancelling the
            # upstream calls) right then.
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
            return
        async with self._leases.hold(f"{caller.key_id}/{request.request_id}", deadline):
            previous = await self._records.find_by_request_id(
                request.request_id, deadline, scope=caller.key_id
            )
            if previous is None:
                await self._admit(caller, valid)
                events = self._generate(
                    request, valid, resolution, plan, backend, deadline, digest, caller
                )
            elif previous.fingerprint != digest:
                raise RequestIdConflict(
                    "request_id was already used for a different request.",
                    metadata={"request_id": request.request_id},
                )
            else:
                events = self._replay(previous, request.response_format)
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event

    async def _admit(self, caller: Caller, valid: ValidRequest) -> None:
        """Refuse a new generation that would go over the caller's quotas."""
        if caller.anonymous:
            return
        price = valid.spec.price_per_image
        await self._usage.admit(caller, valid.n, None if price is None else price * valid.n)

    async def _record_usage(self, caller: Caller, record: GenerationRecord) -> None:
        """Count what was produced against the key's quotas; never fails the call."""
        if caller.anonymous:
            return
        try:
            await self._usage.record(caller, len(record.images), record.cost)
        except Exception as error:
            # The images are paid and go to the caller regardless; this line
            # is what reconciling the counters needs.
            log.error(
                "usage of %s not recorded (%s): key %s, %d images, cost %s",
                record.generation_id,
                type(error).__name__,
                caller.key_id,
                len(record.images),
                record.cost,
            )

    async def _replay(
        self, record: GenerationRecord, response_format: ResponseFormat
    ) -> AsyncGenerator[StreamEvent, None]:
        for image in record.images:
            if response_format is ResponseFormat.INLINE and image.stored:
                image = replace(image, data=await self._store.get(image.key))
            yield ImageReady(image)
        yield GenerationDone(record)

    async def _generate(
        self,
        request: AnyRequest,
        valid: ValidRequest,
        resolution: Resolution,
        plan: OutputPlan,
        backend: ImageBackend,
        deadline: Deadline,
        digest: str,
        caller: Caller,
    ) -> AsyncGenerator[StreamEvent, None]:
        generation = Generation.begin(deadline, request.response_format, plan)
        tasks = [
            asyncio.create_task(self._run_call(generation, backend, planned))
            for planned in plan_calls(valid, request.seed)
        ]
        images: list[DeliveredImage] = []
        outcomes: list[CallOutcome] = []
        try:
            while len(outcomes) < len(tasks):
                item = await generation.output.get()
                if isinstance(item, DeliveredImage):
                    images.append(item)
                    yield ImageReady(item)
                else:
                    outcomes.append(item)
        finally:
            # Reached early only when the caller went away: stop paying for
            # images nobody will receive.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if not images:
            raise most_telling_error(outcomes)
        cost = generation_cost(
            valid.spec.price_per_image,
            valid.spec.token_prices,
            len(images),
            (o.usage for o in outcomes if o.produced),
        )
        record = GenerationRecord(
            generation_id=generation.id,
            model=resolution.requested.name,
            operation=valid.operation,
            prompt=request.prompt,
            size=str(valid.size) if valid.size else "",
            n=valid.n,
            created=int(time.time()),
            images=tuple(image.without_data() for image in sorted(images, key=lambda i: i.index)),
            cost=cost,
            latency_ms=generation.latency_ms(),
            request_id=request.request_id,
            filtered_count=sum(o.filtered for o in outcomes),
            failures=failures(outcomes),
            fingerprint=digest,
            served_by=valid.spec.name,
            upstream_model=valid.spec.upstream_model,
            warnings=resolution.warnings + seed_warnings(valid.spec, request.seed) + plan.warnings,
            quality=plan.quality,
            output_format=plan.output_format,
            background=plan.background,
            user=request.output.user,
            key_id=caller.key_id,
        )
        await self._record_usage(caller, record)
        self._telemetry.generation_delivered(
            record.model,  # the name the caller used, as in every other metric and log
            valid.spec.backend,
            images=len(images),
            inline_fallbacks=sum(1 for image in images if not image.stored),
            cost=record.cost,
            key_id=caller.key_id,
        )
        try:
            await self._records.save(record, generation.storage_deadline)
        except Exception:
            # The caller still gets every image; only GetGeneration and
            # request_id replay will not find this one.
            log.exception("could not save the record of %s", generation.id)
        yield GenerationDone(record)

    async def _run_call(
        self, generation: Generation, backend: ImageBackend, planned: PlannedCall
    ) -> None:
        """One upstream call: store and send each image, then the outcome."""
        call = planned.call
        outcome = CallOutcome(missing=call.count)
        try:
            result = await _within(
                backend.run(call, generation.upstream_deadline),
                generation.upstream_deadline,
                call.model.backend,
            )
            produced = result.images[: call.count]
            outcome.missing = call.count - len(produced)
            outcome.filtered = min(result.filtered, outcome.missing)
            outcome.produced = bool(produced)
            outcome.usage = result.usage

            async def store_and_send(index: int, image: ProducedImage) -> None:
                delivered = await self._store_image(generation, index, image)
                await generation.output.put(replace(delivered, seed=call.seed))

            await asyncio.gather(
                *(
                    store_and_send(planned.first_index + i, image)
                    for i, image in enumerate(produced)
                )
            )
        except ImageServiceError as error:
            outcome.error = error
        except Exception:
            log.exception("backend call for %s failed unexpectedly", generation.id)
            outcome.error = ImageServiceError("The upstream call failed unexpectedly.")
        await generation.output.put(outcome)

    async def _store_image(
        self, generation: Generation, index: int, image: ProducedImage
    ) -> DeliveredImage:
        """Upload one image; on lasting failure hand it back inline instead."""
        plan = generation.plan
        if (
            plan is not None
            and plan.mime_type
            and (plan.compression is not None or plan.mime_type != sniff_mime_type(image.data))
        ):
            try:
                converted = await asyncio.to_thread(
                    convert, image.data, plan.mime_type, compression=plan.compression
                )
            except ValueError:
                # Unreadable: deliver what the upstream sent rather than nothing.
                log.warning("%s image %d could not be re-encoded", generation.id, index)
            else:
                image = replace(image, data=converted, mime_type=plan.mime_type)
        try:
            # On the loop: the header alone, nothing decompressed.
            info = measure(image.data)
            mime, width, height = info.mime_type, info.width, info.height
        except ValueError:
            log.warning("%s image %d is not a readable image", generation.id, index)
            mime, width, height = image.mime_type, 0, 0
        key = f"images/{generation.id}-{index}.{EXTENSION_BY_MIME.get(mime, 'bin')}"
        deadline = generation.storage_deadline
        try:
            await self._storage_retry.run(
                lambda: put_within(self._store, key, image.data, mime, deadline), deadline
            )
            stored = True
        except Exception as error:
            # Never drop a paid image: hand it over inline instead. Domain
            # error messages are safe to log; others only by class name.
            log.error(
                "storing %s image %d failed (%s); returning it inline",
                generation.id,
                index,
                f"{error.reason}: {error.message}"
                if isinstance(error, ImageServiceError)
                else type(error).__name__,
            )
            stored = False
        inline = generation.response_format is ResponseFormat.INLINE or not stored
        return DeliveredImage(
            index=index,
            mime_type=mime,
            width=width,
            height=height,
            key=key if stored else "",
            url=self._store.url_for(key) if stored else "",
            revised_prompt=image.revised_prompt,
            stored=stored,
            data=image.data if inline else None,
        )


def _visible_to(caller: Caller, record: GenerationRecord) -> bool:
    """A key sees its own records; the anonymous caller (no auth) sees all."""
    return caller.anonymous or record.key_id == caller.key_id
