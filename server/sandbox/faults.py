"""Fault injection shared by every sandbox emulator.

Each emulator owns one `FaultPlan`. Tests program it; people drive it from
a prompt. For every upstream request that passes the emulator's own checks
(auth, body validation) the plan yields one `Fault` and one latency:

    plan = sandbox.azure_flux.faults
    plan.push(FaultMode.RATE_LIMIT, retry_after=1)   # next request: 429
    plan.push(FaultMode.SERVER_ERROR, times=2)       # then two 500s
    plan.latencies = [0.8, 0.1, 0.5, 0.3]            # per-request delays, in order
    plan.default_latency = 0.05                      # once the list runs out
    gate = plan.hold()                               # the next request waits...
    gate.set()                                       # ...until the test says so

A held request answers when its test releases it, not after a delay, so a
test of completion order does not depend on how busy the machine is.

A prompt can carry directives, so a fault can be triggered through the
whole stack with grpcurl; they override the queue for that request and are
not drawn into the image:

    "a red fox [sandbox:fault=rate_limit] [sandbox:retry_after=2]"
    "a red fox [sandbox:latency=1.5]"
    "a red fox [sandbox:fault=content_filter] [sandbox:variant=finish_reason]"

`FaultPlan.stats` counts what the emulator saw, so a test can prove for
instance that cancelling an RPC cancelled the upstream call:

    await plan.wait_for(lambda s: s.cancelled == 1 and s.in_flight == 0)

How an emulator uses it: wrap each route's handler with `plan.endpoint`,
then call `exchange.begin(prompt)` once the request is known to be valid.
`begin` applies the latency and, for `TIMEOUT`, hangs; the emulator turns
the returned fault into its upstream's own error response (the wire shape
of a 429 or a content-filter refusal differs per provider), and answers
`DROP_CONNECTION` with a `DroppedResponse`. Waits end early, and the
request counts as cancelled, when the client disconnects.

A plan is not thread-safe: change it from the event loop the sandbox runs on.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send


class FaultMode(enum.Enum):
    """What goes wrong with one upstream request."""

    NONE = "none"
    # The upstream refuses the parameters (HTTP 400).
    BAD_REQUEST = "bad_request"
    # The upstream's safety system refuses; `Fault.variant` picks the shape
    # where the provider has more than one.
    CONTENT_FILTER = "content_filter"
    # HTTP 429, with Retry-After when `Fault.retry_after` is set.
    RATE_LIMIT = "rate_limit"
    # HTTP 500.
    SERVER_ERROR = "server_error"
    # No answer for `FaultPlan.hang_s` (far longer than any client waits).
    TIMEOUT = "timeout"
    # Response headers with a Content-Length, part of the body, then the
    # connection closes: the client sees a truncated response.
    DROP_CONNECTION = "drop_connection"


@dataclass(frozen=True)
class Fault:
    """One injected fault; `variant` is emulator-specific (see each emulator)."""

    mode: FaultMode = FaultMode.NONE
    retry_after: float | None = None
    variant: str = ""


NO_FAULT = Fault()


@dataclass(frozen=True)
class Step:
    """What the plan decided for one request."""

    fault: Fault
    latency: float
    # Set by the test to let the request go on (see `FaultPlan.hold`).
    gate: asyncio.Event | None = None


@dataclass
class FaultStats:
    """What an emulator saw; every request is counted once in `received`.

    A finished request is exactly one of `completed` (response sent in full,
    errors included), `cancelled` (the client went away first) or `dropped`
    (a `DROP_CONNECTION` fault cut it).
    """

    received: int = 0
    in_flight: int = 0
    # The most requests in flight at once, to check client-side limits.
    max_in_flight: int = 0
    completed: int = 0
    cancelled: int = 0
    dropped: int = 0
    faults: Counter[FaultMode] = field(default_factory=Counter)


_DIRECTIVE = re.compile(r"\[sandbox:([a-z_]+)=([^\]\s]*)\]", re.IGNORECASE)


def parse_directives(prompt: str) -> dict[str, str]:
    """The `[sandbox:key=value]` directives in `prompt` (last one wins)."""
    return {key.lower(): value for key, value in _DIRECTIVE.findall(prompt)}


def strip_directives(prompt: str) -> str:
    """`prompt` without its sandbox directives, for drawing into the image."""
    return " ".join(_DIRECTIVE.sub(" ", prompt).split())


def _float_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None


class ClientGone(Exception):
    """The client disconnected while the emulator was working on its request."""


class SandboxClosing(Exception):
    """The sandbox is shutting down; waits end at once."""


class FaultPlan:
    """The programmable behaviour and the counters of one emulator."""

    def __init__(self, *, default_latency: float = 0.0, hang_s: float = 3600.0) -> None:
        self.default_latency = default_latency
        # Per-request latencies, consumed from the front.
        self.latencies: list[float] = []
        self.hang_s = hang_s
        self.stats = FaultStats()
        self._queue: deque[Fault] = deque()
        self._gates: deque[asyncio.Event] = deque()
        self._exchanges: set[Exchange] = set()
        self._closing = False

    def push(
        self,
        mode: FaultMode,
        *,
        retry_after: float | None = None,
        variant: str = "",
        times: int = 1,
    ) -> None:
        """Queue a fault for the next `times` requests (after those queued)."""
        if times < 1:
            raise ValueError("times must be at least 1")
        self._queue.extend([Fault(mode, retry_after, variant)] * times)

    def hold(self) -> asyncio.Event:
        """Hold the next request (after those already held) once it has
        waited its latency, until the returned event is set; then its fault,
        if any, applies as usual. A held request still ends early when the
        client leaves or the sandbox closes."""
        gate = asyncio.Event()
        self._gates.append(gate)
        return gate

    @property
    def pending(self) -> int:
        """Faults still queued."""
        return len(self._queue)

    def next(self, prompt: str = "") -> Step:
        """Consume the queue and the latency list for one request.

        Both are consumed even when directives in `prompt` override them, so
        "the Nth request" always means the same thing.
        """
        fault = self._queue.popleft() if self._queue else NO_FAULT
        latency = self.latencies.pop(0) if self.latencies else self.default_latency
        gate = self._gates.popleft() if self._gates else None
        directives = parse_directives(prompt)
        if "fault" in directives:
            try:
                mode = FaultMode(directives["fault"].lower())
            except ValueError:
                mode = fault.mode
            fault = Fault(
                mode,
                _float_or_none(directives.get("retry_after")),
                directives.get("variant", ""),
            )
        directive_latency = _float_or_none(directives.get("latency"))
        if directive_latency is not None:
            latency = directive_latency
        self.stats.faults[fault.mode] += 1
        return Step(fault, latency, gate)

    def reset(self) -> None:
        """Forget queued faults, latencies and holds and zero the counters.

        Requests still in flight stay counted in `in_flight`; the stats
        object is reset in place, so references to it stay valid.
        """
        self._queue.clear()
        self._gates.clear()
        self.latencies = []
        stats = self.stats
        stats.received = stats.completed = stats.cancelled = stats.dropped = 0
        stats.max_in_flight = stats.in_flight
        stats.faults.clear()

    async def wait_for(
        self, predicate: Callable[[FaultStats], bool], within_s: float = 5.0
    ) -> FaultStats:
        """Wait until `predicate(stats)` holds; TimeoutError after `within_s`."""
        stop = time.monotonic() + within_s
        while not predicate(self.stats):
            if time.monotonic() >= stop:
                raise TimeoutError(f"condition not reached within {within_s} s: {self.stats}")
            await asyncio.sleep(0.01)
        return self.stats

    def close(self) -> None:
        """End every wait now (for shutdown); later waits end at once too."""
        self._closing = True
        for exchange in list(self._exchanges):
            exchange._interrupt.set()

    def open(self) -> None:
        """Undo `close`, for a sandbox that starts again."""
        self._closing = False

    def endpoint(self, handler: Handler) -> TrackedEndpoint:
        """An ASGI app (for a Starlette `Route`) that runs `handler` with tracking."""
        return TrackedEndpoint(self, handler)


class Exchange:
    """One request as its handler sees it: the plan step, and waits that notice
    a client disconnect."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._interrupt = asyncio.Event()
        self._client_gone = False
        if plan._closing:
            self._interrupt.set()

    @property
    def client_gone(self) -> bool:
        return self._client_gone

    async def sleep(self, seconds: float) -> None:
        """Sleep, unless the client disconnects (`ClientGone`) or the sandbox
        closes (`SandboxClosing`) first."""
        if not self._interrupt.is_set() and seconds > 0:
            try:
                async with asyncio.timeout(seconds):
                    await self._interrupt.wait()
            except TimeoutError:
                return
        self._raise_if_interrupted()

    async def wait(self, gate: asyncio.Event) -> None:
        """Wait for `gate`, unless the client disconnects (`ClientGone`) or
        the sandbox closes (`SandboxClosing`) first."""
        if not self._interrupt.is_set() and not gate.is_set():
            released = asyncio.ensure_future(gate.wait())
            interrupted = asyncio.ensure_future(self._interrupt.wait())
            try:
                await asyncio.wait((released, interrupted), return_when=asyncio.FIRST_COMPLETED)
            finally:
                released.cancel()
                interrupted.cancel()
        self._raise_if_interrupted()

    def _raise_if_interrupted(self) -> None:
        if self._client_gone:
            raise ClientGone
        if self._interrupt.is_set():
            raise SandboxClosing

    async def begin(self, prompt: str = "") -> Fault:
        """Take this request's step from the plan, wait its latency and, if
        it is held, for its release.

        For `TIMEOUT` this also hangs for `plan.hang_s` before returning, so
        the emulator's answer (if any client is still there) comes late.
        """
        step = self.plan.next(prompt)
        await self.sleep(step.latency)
        if step.gate is not None:
            await self.wait(step.gate)
        if step.fault.mode is FaultMode.TIMEOUT:
            await self.sleep(self.plan.hang_s)
        return step.fault

    async def _watch(self, receive: Receive) -> None:
        # The body has been read, so the next message the server hands us
        # is the disconnect (uvicorn also sends one once the response is
        # complete; by then the outcome is already recorded).
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._client_gone = True
                self._interrupt.set()
                return


Handler = Callable[[Request, Exchange], Awaitable[Response]]


class DroppedResponse(Response):
    """Starts a response promising `content_length` bytes, sends `partial`,
    then returns without finishing, so the server closes the connection."""

    def __init__(self, *, partial: bytes, content_length: int, media_type: str) -> None:
        super().__init__(b"", status_code=200, media_type=media_type)
        self.partial = partial
        self.raw_headers = [
            (k, v) for k, v in self.raw_headers if k.lower() != b"content-length"
        ] + [(b"content-length", str(max(content_length, len(partial) + 1)).encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.partial, "more_body": True})
        _deliberate_drop.set(True)


# uvicorn logs "returned without completing response" for a dropped
# response; `quiet_uvicorn_filter` hides that line only when we meant it.
_deliberate_drop: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sandbox_deliberate_drop", default=False
)
# Set while the sandbox's uvicorn server starts, stops or serves a request, so
# its info lines (start-up, access log) are hidden without touching other
# uvicorn servers in the process; warnings and errors still get through.
sandbox_server_context: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sandbox_server_context", default=False
)


class _QuietUvicornFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _deliberate_drop.get() and "without completing response" in str(record.msg):
            return False
        return not (sandbox_server_context.get() and record.levelno < logging.WARNING)


quiet_uvicorn_filter = _QuietUvicornFilter()


class TrackedEndpoint:
    """ASGI wrapper that counts a handler's requests in `plan.stats`.

    The request body is read before the handler runs, so that from then on
    a watcher can listen for the client's disconnect.
    """

    def __init__(self, plan: FaultPlan, handler: Handler) -> None:
        self._plan = plan
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plan = self._plan
        plan.stats.received += 1
        plan.stats.in_flight += 1
        plan.stats.max_in_flight = max(plan.stats.max_in_flight, plan.stats.in_flight)
        exchange = Exchange(plan)
        plan._exchanges.add(exchange)
        # Stays None if the handler crashes: that is a bug, not an outcome.
        outcome: str | None = None
        watcher: asyncio.Task[None] | None = None
        try:
            request = Request(scope, receive, send)
            await request.body()
            watcher = asyncio.create_task(exchange._watch(receive))
            try:
                response = await self._handler(request, exchange)
            except SandboxClosing:
                response = PlainTextResponse("sandbox shutting down", status_code=503)
            if exchange.client_gone:
                outcome = "cancelled"
            elif isinstance(response, DroppedResponse):
                await response(scope, receive, send)
                outcome = "dropped"
            else:
                sent = await _send_tracked(response, exchange, scope, send)
                outcome = "completed" if sent else "cancelled"
        except (ClientGone, ClientDisconnect):
            outcome = "cancelled"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            plan._exchanges.discard(exchange)
            plan.stats.in_flight -= 1
            if outcome is not None:
                setattr(plan.stats, outcome, getattr(plan.stats, outcome) + 1)


async def _send_tracked(response: Response, exchange: Exchange, scope: Scope, send: Send) -> bool:
    """Send `response`; False if the client left before the last byte."""
    sent_in_full = False

    async def tracking_send(message: Message) -> None:
        nonlocal sent_in_full
        final = message["type"] == "http.response.body" and not message.get("more_body", False)
        if final and exchange.client_gone:
            return
        await send(message)
        sent_in_full = sent_in_full or final

    async def receive_disconnect() -> Message:
        # The watcher owns the real receive(); a response that listens for
        # the disconnect (streaming) learns of it through the exchange.
        await exchange._interrupt.wait()
        return {"type": "http.disconnect"}

    await response(scope, receive_disconnect, tracking_send)
    return sent_in_full
