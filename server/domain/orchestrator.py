"""The orchestration: validate, fan out to the backend, store, record.

`Orchestrator.stream` is the one code path: the streaming RPCs relay its
events, the unary RPCs drain it (`Orchestrator.run`). For n > 1 it starts as
many concurrent upstream calls as the model's images-per-call requires and
yields each image the moment it is stored, so the first image arrives when
the fastest call finishes. Every image an upstream returned reaches the
caller: stored with a URL, or inline and flagged not stored if storage keeps
failing. When some calls fail and others succeed, the generation completes
with the images that succeeded and says why the rest are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, replace

from server.domain.catalogue import Catalogue, ModelSpec
from server.domain.deadline import Deadline
from server.domain.errors import (
    BackendNotConfigured,
    ContentRejected,
    FieldViolation,
    GenerationNotFound,
    ImageServiceError,
    InvalidArgument,
    RequestIdConflict,
)
from server.domain.imaging import EXTENSION_BY_MIME, inspect
from server.domain.ports import BlobStore, ImageBackend, ProducedImage, UpstreamCall
from server.domain.records import (
    DeliveredImage,
    GenerationRecord,
    ImageFailure,
    RecordStore,
    put_within,
)
from server.domain.requests import AnyRequest, EditRequest, ResponseFormat
from server.domain.retry import RetryPolicy
from server.domain.validation import ValidRequest, check_model_name, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageReady:
    """An image is stored (or, if storage failed, ready inline)."""

    image: DeliveredImage


@dataclass(frozen=True)
class GenerationDone:
    """The last event of a stream: the generation record (images without data)."""

    record: GenerationRecord


StreamEvent = ImageReady | GenerationDone


@dataclass(frozen=True)
class ModelListing:
    spec: ModelSpec
    configured: bool


class Backends:
    """The configured backends by registry key, and what the others lack."""

    def __init__(
        self,
        configured: Mapping[str, ImageBackend],
        missing_settings: Mapping[str, str] | None = None,
    ) -> None:
        self._configured = dict(configured)
        self._missing = dict(missing_settings or {})

    def is_configured(self, backend: str) -> bool:
        return backend in self._configured

    def get(self, spec: ModelSpec) -> ImageBackend:
        try:
            return self._configured[spec.backend]
        except KeyError:
            setting = self._missing.get(spec.backend, f"the {spec.backend} backend settings")
            raise BackendNotConfigured(
                f"{spec.name} is not configured on this deployment; set {setting}.",
                metadata={"model": spec.name, "backend": spec.backend, "setting": setting},
            ) from None

    async def aclose(self) -> None:
        for backend in self._configured.values():
            await backend.aclose()


GENERATION_ID = re.compile(r"gen-[0-9a-f]{16}")


def new_generation_id() -> str:
    """`gen-` followed by 16 random hex characters."""
    return "gen-" + secrets.token_hex(8)


@dataclass
class _CallOutcome:
    """Sent by a call task after its images: what is missing and why."""

    missing: int = 0
    filtered: int = 0
    error: ImageServiceError | None = None


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
    ) -> None:
        self._catalogue = catalogue
        self._backends = backends
        self._store = store
        self._storage_retry = storage_retry
        # Records (prompts, request ids, costs) may live apart from the
        # images, which a public bucket serves to anyone holding a URL.
        self._records = RecordStore(record_store or store, storage_retry)
        self._default_deadline_s = default_deadline_s
        self._request_locks: dict[str, asyncio.Lock] = {}

    def list_models(self) -> list[ModelListing]:
        return [
            ModelListing(spec, self._backends.is_configured(spec.backend))
            for spec in self._catalogue
        ]

    async def get_generation(self, generation_id: str) -> GenerationRecord:
        if not GENERATION_ID.fullmatch(generation_id):
            raise InvalidArgument(
                [FieldViolation("generation_id", "must look like gen-0123456789abcdef")]
            )
        record = await self._records.get(generation_id)
        if record is None:
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
        """Validate `request`, run it and yield its events (see module doc)."""
        check_model_name(request.model)
        spec = self._catalogue.get(request.model)
        valid = validate(request, spec)
        backend = self._backends.get(spec)
        deadline = deadline.earliest(Deadline.after(self._default_deadline_s))
        fingerprint = _fingerprint(request)
        if not request.request_id:
            generate = self._generate(request, valid, backend, deadline, fingerprint)
            # `async for` alone would leave the inner generator suspended when
            # the caller goes away; aclosing runs its cleanup (cancelling the
            # upstream calls) right then.
            async with contextlib.aclosing(generate) as events:
                async for event in events:
                    yield event
            return
        async with self._request_lock(request.request_id):
            previous = await self._records.find_by_request_id(request.request_id, deadline)
            if previous is None:
                events = self._generate(request, valid, backend, deadline, fingerprint)
            elif previous.fingerprint != fingerprint:
                raise RequestIdConflict(
                    "request_id was already used for a different request.",
                    metadata={"request_id": request.request_id},
                )
            else:
                events = self._replay(previous, request.response_format)
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event

    @contextlib.asynccontextmanager
    async def _request_lock(self, request_id: str) -> AsyncIterator[None]:
        # Serialises concurrent retries with the same id on this replica, so
        # the second waits for the first's record instead of paying again.
        lock = self._request_locks.setdefault(request_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._request_locks.get(request_id) is lock:
                del self._request_locks[request_id]

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
        backend: ImageBackend,
        deadline: Deadline,
        fingerprint: str,
    ) -> AsyncGenerator[StreamEvent, None]:
        generation_id = new_generation_id()
        started = time.monotonic()
        storage_deadline = _storage_deadline(deadline)
        queue: asyncio.Queue[DeliveredImage | _CallOutcome] = asyncio.Queue()
        calls = _plan_calls(valid, request.seed)
        tasks = [
            asyncio.create_task(
                self._run_call(
                    backend,
                    call,
                    first_index,
                    generation_id,
                    request.response_format,
                    deadline,
                    queue,
                )
            )
            for first_index, call in calls
        ]
        images: list[DeliveredImage] = []
        outcomes: list[_CallOutcome] = []
        try:
            while len(outcomes) < len(tasks):
                item = await queue.get()
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
            raise _most_telling_error(outcomes)
        record = GenerationRecord(
            generation_id=generation_id,
            model=valid.spec.name,
            operation=valid.operation,
            prompt=request.prompt,
            size=str(valid.size) if valid.size else "",
            n=valid.n,
            created=int(time.time()),
            images=tuple(image.without_data() for image in sorted(images, key=lambda i: i.index)),
            cost=valid.spec.price_per_image * len(images),
            latency_ms=int((time.monotonic() - started) * 1000),
            request_id=request.request_id,
            filtered_count=sum(o.filtered for o in outcomes),
            failures=_failures(outcomes),
            fingerprint=fingerprint,
        )
        try:
            await self._records.save(record, storage_deadline)
        except Exception:
            # The caller still gets every image; only GetGeneration and
            # request_id replay will not find this one.
            log.exception("could not save the record of %s", generation_id)
        yield GenerationDone(record)

    async def _run_call(
        self,
        backend: ImageBackend,
        call: UpstreamCall,
        first_index: int,
        generation_id: str,
        response_format: ResponseFormat,
        deadline: Deadline,
        queue: asyncio.Queue[DeliveredImage | _CallOutcome],
    ) -> None:
        outcome = _CallOutcome(missing=call.count)
        # Computed now, at the start of the generation, like `_generate`'s.
        storage_deadline = _storage_deadline(deadline)
        try:
            result = await backend.run(call, deadline)
            produced = result.images[: call.count]
            outcome.missing = call.count - len(produced)
            outcome.filtered = min(result.filtered, outcome.missing)

            async def store_and_send(index: int, image: ProducedImage) -> None:
                delivered = await self._store_image(
                    generation_id, index, image, response_format, storage_deadline
                )
                await queue.put(delivered)

            await asyncio.gather(
                *(store_and_send(first_index + i, image) for i, image in enumerate(produced))
            )
        except ImageServiceError as error:
            outcome.error = error
        except Exception:
            log.exception("backend call for %s failed unexpectedly", generation_id)
            outcome.error = ImageServiceError("The upstream call failed unexpectedly.")
        await queue.put(outcome)

    async def _store_image(
        self,
        generation_id: str,
        index: int,
        image: ProducedImage,
        response_format: ResponseFormat,
        storage_deadline: Deadline,
    ) -> DeliveredImage:
        try:
            info = inspect(image.data)
            mime, width, height = info.mime_type, info.width, info.height
        except ValueError:
            log.warning("%s image %d is not a readable image", generation_id, index)
            mime, width, height = image.mime_type, 0, 0
        key = f"images/{generation_id}-{index}.{EXTENSION_BY_MIME.get(mime, 'bin')}"
        try:
            await self._storage_retry.run(
                lambda: put_within(self._store, key, image.data, mime, storage_deadline),
                storage_deadline,
            )
            stored = True
        except Exception as error:
            # Never drop a paid image: hand it over inline instead. Domain
            # error messages are safe to log; others only by class name.
            log.error(
                "storing %s image %d failed (%s); returning it inline",
                generation_id,
                index,
                f"{error.reason}: {error.message}"
                if isinstance(error, ImageServiceError)
                else type(error).__name__,
            )
            stored = False
        inline = response_format is ResponseFormat.INLINE or not stored
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


# Part of the caller's deadline that storage may not use, so that when
# uploads hang (not just fail) the paid images still go back inline before
# the caller gives up, instead of the RPC ending in DEADLINE_EXCEEDED.
_INLINE_RESERVE_FRACTION = 0.1
_INLINE_RESERVE_MAX_S = 5.0


def _storage_deadline(deadline: Deadline) -> Deadline:
    """When uploads and the record write must be done: `deadline` minus the reserve."""
    remaining = deadline.remaining()
    if deadline.at is None or remaining is None:
        return deadline
    return Deadline(deadline.at - min(_INLINE_RESERVE_MAX_S, remaining * _INLINE_RESERVE_FRACTION))


def _plan_calls(valid: ValidRequest, seed: int | None) -> list[tuple[int, UpstreamCall]]:
    """Split n images into calls of at most images_per_call each."""
    per_call = max(1, valid.spec.images_per_call)
    calls: list[tuple[int, UpstreamCall]] = []
    for first in range(0, valid.n, per_call):
        calls.append(
            (
                first,
                UpstreamCall(
                    model=valid.spec,
                    prompt=valid.prompt,
                    size=valid.size,
                    count=min(per_call, valid.n - first),
                    operation=valid.operation,
                    images=valid.images,
                    mask=valid.mask,
                    # Distinct seeds per fan-out call, or n calls would return
                    # n copies of the same image.
                    seed=None if seed is None else seed + first,
                ),
            )
        )
    return calls


def _failures(outcomes: list[_CallOutcome]) -> tuple[ImageFailure, ...]:
    failures: list[ImageFailure] = []
    for outcome in outcomes:
        if outcome.error is not None:
            failures.append(
                ImageFailure(outcome.missing, outcome.error.reason, outcome.error.message)
            )
            continue
        if outcome.filtered:
            failures.append(
                ImageFailure(
                    outcome.filtered,
                    ContentRejected.reason,
                    "The upstream's safety filter withheld these images.",
                )
            )
        if outcome.missing > outcome.filtered:
            failures.append(
                ImageFailure(
                    outcome.missing - outcome.filtered,
                    "UPSTREAM_SHORTFALL",
                    "The upstream returned fewer images than requested.",
                )
            )
    return tuple(failures)


def _most_telling_error(outcomes: list[_CallOutcome]) -> ImageServiceError:
    """The error to raise when no image at all was produced."""
    errors = [o.error for o in outcomes if o.error is not None]
    for error in errors:
        if isinstance(error, ContentRejected):
            return error
    if errors:
        return errors[0]
    if any(o.filtered for o in outcomes):
        return ContentRejected("The upstream's safety filter withheld every image.")
    return ImageServiceError("The upstream returned no images.")


def _fingerprint(request: AnyRequest) -> str:
    fields: dict[str, object] = {
        "model": request.model,
        "operation": request.operation.value,
        "prompt": request.prompt,
        "size": request.size,
        "n": request.n or 1,
        "seed": request.seed,
    }
    if isinstance(request, EditRequest):
        fields["images"] = [hashlib.sha256(i).hexdigest() for i in request.images]
        fields["mask"] = hashlib.sha256(request.mask).hexdigest() if request.mask else None
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
