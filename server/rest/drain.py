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
   replica; an event stream gets a final `error` event.
4. What is still unanswered after that (a request whose body is still
   arriving, say: it waits on its client, not on the service), is cut:
   `Drain.cut_unanswered()` cancels it and the middleware answers the same
   503, rather than uvicorn's plain-text 500 when it stops. Then uvicorn stops.

The chart's `terminationGracePeriodSeconds` covers the preStop sleep plus
the longer of the two processes' grace periods.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
        # The tasks of requests that have not begun their answer, and those
        # of them `cut_unanswered` cancelled.
        self._unanswered: set[asyncio.Task[Any]] = set()
        self._cut: set[asyncio.Task[Any]] = set()

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

    def cut_unanswered(self) -> int:
        """Cancel every request that has not begun its answer; how many.

        The last resort after the grace and the time given to the requests told
        to stop: each one cut answers 503 `shutting_down` (`DrainMiddleware`).
        """
        for task in self._unanswered - self._cut:
            self._cut.add(task)
            task.cancel()
        return len(self._unanswered)

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
        drain = self._drain
        task = asyncio.current_task()
        assert task is not None  # uvicorn runs each request in a task of its own
        answering = False

        async def send_noting_the_answer(message: Message) -> None:
            nonlocal answering
            if message["type"] == "http.response.start":
                answering = True
                drain._unanswered.discard(task)
            await send(message)

        async with drain.requests.counted():
            drain._unanswered.add(task)
            try:
                await self._app(scope, receive, send_noting_the_answer)
            except asyncio.CancelledError:
                if answering or task not in drain._cut:
                    raise  # the client went away, or the server is stopping
                task.uncancel()
                await ShuttingDown().response()(scope, receive, send)
            finally:
                drain._unanswered.discard(task)
                drain._cut.discard(task)
