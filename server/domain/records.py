"""Generation records and where they live.

A record is stored as JSON in the same blob store as the images
(`generations/<id>.json`), so `GetGeneration` works from any replica and
after any restart without a database. `request_id` idempotency uses the
same store: `request-ids/<sha256 of id>.json` points at the generation.
Records keep image *keys*; URLs are derived when read, so a change of
public base URL (or presigned mode) applies to old records too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from typing import Any

from server.domain.deadline import Deadline
from server.domain.errors import StorageUnavailable
from server.domain.ports import BlobStore
from server.domain.requests import Operation
from server.domain.retry import RetryPolicy

_JSON = "application/json"


@dataclass(frozen=True)
class DeliveredImage:
    """An image as the caller receives it."""

    index: int
    mime_type: str
    width: int
    height: int
    key: str = ""
    url: str = ""
    revised_prompt: str = ""
    # False when storage kept failing: the bytes are then in `data`.
    stored: bool = True
    data: bytes | None = field(default=None, repr=False)
    # The seed sent on the upstream call that produced this image (None when
    # none was sent): a request with this seed and the same count
    # reproduces it on a deterministic upstream.
    seed: int | None = None

    def without_data(self) -> DeliveredImage:
        return replace(self, data=None)


@dataclass(frozen=True)
class ImageFailure:
    """Why `image_count` requested images are missing from a generation."""

    image_count: int
    reason: str
    message: str


@dataclass(frozen=True)
class GenerationRecord:
    """The permanent record of one generation or edit."""

    generation_id: str
    model: str
    operation: Operation
    prompt: str
    size: str
    n: int
    created: int
    images: tuple[DeliveredImage, ...]
    # None when the model's price is unknown: never reported as 0.
    cost: Decimal | None
    latency_ms: int
    request_id: str = ""
    filtered_count: int = 0
    failures: tuple[ImageFailure, ...] = ()
    # Hash of what was asked, to tell a retry from a reused request_id.
    fingerprint: str = ""
    # The catalogue model that served the call (differs from `model` when a
    # retired model was routed to its successor) and its upstream id.
    served_by: str = ""
    upstream_model: str = ""
    # What the caller should know: routing, retirement, unused parameters.
    warnings: tuple[str, ...] = ()
    # OpenAI's response fields, as delivered, and the caller's end-user id.
    quality: str = ""
    output_format: str = ""
    background: str = ""
    user: str = ""
    # The public id of the API key that asked ("" without authentication).
    key_id: str = ""

    def to_json(self) -> bytes:
        """The record as stored: every field, images without their bytes and URL."""
        # One level of fields, not `dataclasses.asdict`: asdict walks (and
        # deep-copies) every value, 4x the cost on every generation's path.
        body = _fields_of(self)
        body["operation"] = self.operation.value
        body["cost"] = None if self.cost is None else str(self.cost)
        body["images"] = [_fields_of(image, ("data", "url")) for image in self.images]
        body["failures"] = [_fields_of(failure) for failure in self.failures]
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> GenerationRecord:
        body = json.loads(raw)
        body["operation"] = Operation(body["operation"])
        body["cost"] = None if body["cost"] is None else Decimal(body["cost"])
        body["warnings"] = tuple(body.get("warnings", ()))
        body["images"] = tuple(DeliveredImage(**image) for image in body["images"])
        body["failures"] = tuple(ImageFailure(**f) for f in body.get("failures", []))
        return cls(**body)


def _fields_of(obj: Any, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name not in leave_out}


async def put_within(
    store: BlobStore, key: str, data: bytes, content_type: str, deadline: Deadline
) -> None:
    """One `store.put` attempt that gives up when `deadline` passes.

    A store's own timeouts bound an attempt, but not by the caller's
    deadline: a hung upload must end in time for the images to go back
    inline. Giving up raises `StorageUnavailable` (the object may still
    land; every key is written whole and only ever with the same bytes).
    """
    # asyncio.timeout rather than wait_for: wait_for wraps the put in a
    # task of its own (Python 3.11), and this runs for every stored object.
    remaining = deadline.remaining()
    if remaining is None or remaining > 0:  # else not even started, as with wait_for
        try:
            async with asyncio.timeout(remaining):
                await store.put(key, data, content_type)
            return
        except TimeoutError:
            pass
    raise StorageUnavailable("Storage did not answer within the deadline.", metadata={"key": key})


def format_cost(cost: Decimal | None) -> str:
    """USD with 8 places, as the public API shows it (`0.05000000`).

    An unknown cost is the empty string, never `0.00000000`.
    """
    if cost is None:
        return ""
    return f"{cost.quantize(Decimal('0.00000001'))}"


class RecordStore:
    """Saves and finds generation records in a `BlobStore`."""

    def __init__(self, store: BlobStore, retry: RetryPolicy) -> None:
        self._store = store
        self._retry = retry

    @staticmethod
    def _record_key(generation_id: str) -> str:
        return f"generations/{generation_id}.json"

    @staticmethod
    def _request_key(request_id: str, scope: str = "") -> str:
        # Scoped by key id: two keys' equal request ids are two requests.
        # Unscoped ("", no authentication) keeps the original layout.
        name = f"{scope}\n{request_id}" if scope else request_id
        digest = hashlib.sha256(name.encode()).hexdigest()
        return f"request-ids/{digest}.json"

    async def save(self, record: GenerationRecord, deadline: Deadline) -> None:
        """Write the record (and its request-id index) with retries."""
        key = self._record_key(record.generation_id)
        body = record.to_json()
        await self._retry.run(lambda: put_within(self._store, key, body, _JSON, deadline), deadline)
        if record.request_id:
            pointer = json.dumps({"generation_id": record.generation_id}).encode()
            request_key = self._request_key(record.request_id, record.key_id)
            await self._retry.run(
                lambda: put_within(self._store, request_key, pointer, _JSON, deadline), deadline
            )

    async def get(
        self, generation_id: str, deadline: Deadline | None = None
    ) -> GenerationRecord | None:
        """The record with its URLs derived now, or None if there is none.

        Transient storage errors are retried (within `deadline`, if given).
        """
        raw = await self._read(self._record_key(generation_id), deadline)
        if raw is None:
            return None
        return self._with_urls(GenerationRecord.from_json(raw))

    async def find_by_request_id(
        self, request_id: str, deadline: Deadline | None = None, *, scope: str = ""
    ) -> GenerationRecord | None:
        """The generation `request_id` (of key id `scope`) produced, or None; retried like `get`."""
        raw = await self._read(self._request_key(request_id, scope), deadline)
        if raw is None:
            return None
        return await self.get(json.loads(raw)["generation_id"], deadline)

    async def _read(self, key: str, deadline: Deadline | None) -> bytes | None:
        return await self._retry.run(lambda: self._store.get(key), deadline or Deadline.none())

    def _with_urls(self, record: GenerationRecord) -> GenerationRecord:
        images = tuple(
            replace(image, url=self._store.url_for(image.key)) if image.stored else image
            for image in record.images
        )
        return replace(record, images=images)
