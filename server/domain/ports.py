"""The interfaces the domain needs from the outside world.

Backends (`server.providers`) implement `ImageBackend`; blob stores
(`server.storage`) implement `BlobStore`; the key store (`server.auth`)
implements `UsageLedger` and `RequestLeases`. All are plain protocols so the
domain imports neither an SDK nor an implementation.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from server.domain.callers import Caller
from server.domain.catalogue import ModelSpec
from server.domain.deadline import Deadline
from server.domain.pricing import TokenUsage
from server.domain.requests import NO_EDIT_OPTIONS, EditOptions, Operation, Size


@dataclass(frozen=True)
class UpstreamCall:
    """One call to a backend, after validation and fan-out.

    `count` is how many images this call must produce (at most the model's
    `images_per_call`). `size` is the size the caller asked for, or None for
    an edit that keeps the input's proportions; the backend maps it to what
    its upstream accepts. For edits, `images` are the input images and
    `mask` is a grayscale PNG of the first image's size where white marks
    the region to change (already converted from the OpenAI alpha form).
    """

    model: ModelSpec
    prompt: str
    size: Size | None
    count: int
    operation: Operation = Operation.GENERATE
    images: tuple[bytes, ...] = ()
    mask: bytes | None = None
    seed: int | None = None
    # The operation's own parameters (already validated against the API's
    # rules; a model's narrower ranges are its backend's to check).
    options: EditOptions = NO_EDIT_OPTIONS


@dataclass(frozen=True)
class ProducedImage:
    """Image bytes a backend got from its upstream.

    The domain measures width and height from the bytes themselves, so the
    size reported is always the size actually produced.
    """

    data: bytes
    mime_type: str = "image/png"
    revised_prompt: str = ""


@dataclass(frozen=True)
class UpstreamResult:
    """What one upstream call produced.

    `filtered` counts images the upstream's safety filter withheld while it
    returned the others; a call where everything was filtered raises
    `ContentRejected` instead.
    """

    images: tuple[ProducedImage, ...]
    filtered: int = 0
    # The tokens the call used, for upstreams that bill by token and say so.
    usage: TokenUsage | None = None


class ImageBackend(Protocol):
    """A provider backend: maps one `UpstreamCall` to its upstream and back.

    Implementations raise only `ImageServiceError` subclasses, honour the
    deadline (stop and raise `UpstreamTimeout` when it passes) and let
    `asyncio.CancelledError` propagate so a cancelled RPC cancels the
    upstream call.
    """

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult: ...

    async def aclose(self) -> None: ...


class BlobStore(Protocol):
    """Permanent storage for image bytes and generation records.

    Keys are `/`-separated paths. `put` raises `StorageUnavailable` (marked
    retryable) for failures worth retrying; any other exception is treated
    as a permanent failure of that write.
    """

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is no such key."""
        ...

    def url_for(self, key: str) -> str:
        """The URL a caller fetches the object from."""
        ...

    async def aclose(self) -> None: ...


class UsageLedger(Protocol):
    """Per-key quotas: the daily image cap and the monthly budget.

    `admit` refuses (raises `QuotaExceeded`) a request that would go over a
    quota if it produced every image it asks for; `record` adds what a
    generation actually produced and cost. Each is one atomic step on the
    shared counters, so concurrent requests overspend by at most what the
    requests admitted but not yet recorded (in flight) produce. `admit`
    raises `AuthUnavailable` when the counters cannot be read. A cost of
    None is not known in advance (a token-priced model) or at all: such a
    request is admitted while the month is under budget, and an unknown
    actual cost counts as zero.
    """

    async def admit(self, caller: Caller, images: int, cost: Decimal | None) -> None: ...

    async def record(self, caller: Caller, images: int, cost: Decimal | None) -> None: ...


class RequestLeases(Protocol):
    """Exclusive holds on a request id, so that only one attempt generates.

    `hold(name, deadline)` enters once no other attempt (on this replica
    or, with a shared implementation, any replica) holds `name`; it raises
    `RequestInProgress` when the holder does not finish in time.
    """

    def hold(self, name: str, deadline: Deadline) -> AbstractAsyncContextManager[None]: ...
