"""The sidecar's graceful shutdown: readiness first, then a bounded drain.

On SIGTERM (`image-service rest`):

1. `Drain.begin()`: `/readyz` answers 503 at once, so load balancers stop
   sending new requests; the listener stays open and requests still arriving
   are served, so nothing is refused while endpoints update.
2. The process waits until no request is in flight (`Drain.idle`), for at
   most `IMAGE_SERVICE_REST_SHUTDOWN_GRACE_S`. A request is in flight from
   its first byte until its response, streamed or not, is fully sent.
3. If the grace runs out, `Drain.expire()`: every request still waiting on
   the service cancels its call and answers an OpenAI-shaped 503
   (`code: shutting_down`, `Retry-After`), which the SDKs retry on another
   replica; an event stream gets a final `error` event. Then uvicorn stops.

The chart's `terminationGracePeriodSeconds` covers the preStop sleep plus
the longer of the two processes' grace periods.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

from server.inflight import InFlightCounter
from server.rest.errors import SERVER, SHUTTING_DOWN, RestError

# Health probes are not work to wait for.
_PROBES = frozenset({"/healthz", "/readyz"})
# What a client is told to wait before retrying elsewhere.
_RETRY_AFTER_S = 1


class ShuttingDown(RestError):
    """The request could not finish within the shutdown grace period."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "The server is shutting down; retry the request.",
            type=SERVER,
            code=SHUTTING_DOWN,
            headers={"Retry-After": str(_RETRY_AFTER_S)},
        )


class Drain:
    """Shutdown state shared by the app's routes and the process."""

    def __init__(self) -> None:
        self.draining = False
        self._expired = asyncio.Event()
        self.requests = InFlightCounter()

    @property
    def in_flight(self) -> int:
        return self.requests.count

    @property
    def expired(self) -> bool:
        return self._expired.is_set()

    def begin(self) -> None:
        """Report not ready from now on."""
        self.draining = True

    def expire(self) -> None:
        """The grace is over: requests still waiting answer 503 now."""
        self.draining = True
        self._expired.set()

    async def wait_expired(self) -> None:
        await self._expired.wait()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight: True, or False after `timeout_s`."""
        return await self.requests.wait_idle(timeout_s)


class DrainMiddleware:
    """ASGI middleware counting the requests in flight for `Drain.wait_idle`."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self._app = app
        self._drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _PROBES:
            await self._app(scope, receive, send)
            return
        async with self._drain.requests.counted():
            await self._app(scope, receive, send)
