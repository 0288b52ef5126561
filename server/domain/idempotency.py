"""`request_id` idempotency: what makes two requests the same, and one
generation at a time per id on this replica (`RequestLocks`, the
`RequestLeases` of one process; server/auth/redis_leases.py shares them
across replicas).

The records themselves (`request-ids/...` pointers) live in records.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import asdict

from server.domain.deadline import Deadline
from server.domain.edit_options import fingerprint_fields
from server.domain.requests import AnyRequest, EditRequest


def fingerprint(request: AnyRequest) -> str:
    """A digest of everything that decides the images (not the response
    format, which a replay may change)."""
    fields: dict[str, object] = {
        "model": request.model,
        "operation": request.operation.value,
        "prompt": request.prompt,
        "size": request.size,
        "n": request.n or 1,
        "seed": request.seed,
        "output": asdict(request.output),
    }
    if isinstance(request, EditRequest):
        fields["images"] = [hashlib.sha256(i).hexdigest() for i in request.images]
        fields["mask"] = hashlib.sha256(request.mask).hexdigest() if request.mask else None
        options = fingerprint_fields(request.options)
        if options:
            # Only when set, so the digests of earlier requests stay the same.
            fields["options"] = options
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class RequestLocks:
    """One lock per request id in use, dropped when nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, request_id: str, deadline: Deadline | None = None) -> AsyncIterator[None]:
        # The wait needs no bound of its own: the RPC is cancelled at its deadline.
        # Serialises concurrent retries with the same id on this replica, so
        # the second waits for the first's record instead of paying again.
        lock = self._locks.setdefault(request_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._locks.get(request_id) is lock:
                del self._locks[request_id]
