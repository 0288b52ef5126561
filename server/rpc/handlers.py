"""Wrapping a gRPC method's behaviour, for the server's interceptors.

grpc.aio interceptors see a method only as its `RpcMethodHandler`; to run
code around a call they rebuild the handler with a wrapped behaviour. This
does that once for the shapes the service has: unary requests answered with
one message or a stream (an async generator, or a coroutine that writes, as
grpc_health's Watch does). Client-streaming methods pass through unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    # Generic in grpc-stubs only; not subscriptable at run time.
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor

Context = grpc.aio.ServicerContext[Any, Any]
# Runs before the behaviour; may abort the call (its return value is ignored).
Before = Callable[[Any, Context], Awaitable[None]]
# Wraps the whole call, e.g. to count it while it runs.
Around = Callable[[], Any]  # an async context manager factory


def wrap_unary_request(
    handler: Any,
    *,
    before: Before | None = None,
    around: Around | None = None,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Any:
    """`handler` with `before` / `around` applied to its behaviour, and its
    request deserializer replaced if one is given. Returns `handler` as it
    is for client-streaming methods."""
    if handler is None or handler.request_streaming:
        return handler
    changes: dict[str, Any] = {}
    if request_deserializer is not None:
        changes["request_deserializer"] = request_deserializer
    if handler.unary_unary is not None:
        changes["unary_unary"] = _unary(handler.unary_unary, before, around)
    elif handler.unary_stream is not None:
        changes["unary_stream"] = _stream(handler.unary_stream, before, around)
    # RpcMethodHandler is a namedtuple.
    return handler._replace(**changes)


def _unary(behaviour: Any, before: Before | None, around: Around | None) -> Any:
    async def unary(request: Any, context: Context) -> Any:
        async with around() if around is not None else contextlib.nullcontext():
            if before is not None:
                await before(request, context)
            return await behaviour(request, context)

    return unary


def _stream(behaviour: Any, before: Before | None, around: Around | None) -> Any:
    if not inspect.isasyncgenfunction(behaviour):
        # A coroutine that writes its messages with context.write().
        return _unary(behaviour, before, around)

    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        async with around() if around is not None else contextlib.nullcontext():
            if before is not None:
                await before(request, context)
            async for message in behaviour(request, context):
                yield message

    return stream


class HandlerCache:
    """Wrapped handlers, one per method, reused while the handler beneath is
    the same object.

    grpc.aio asks the interceptors for a handler on every call; rebuilding
    one (closures, a new `RpcMethodHandler`) costs CPU on every call, ~25 µs
    for `RejectUndecodable`, most of it its refusal status. The servicer's
    own handlers are the same objects call after call, and so are the
    handlers of an interceptor beneath that keeps its own in a cache; one
    that wraps per call (auth, with the call's key) makes those above it
    wrap again, as before.
    """

    def __init__(self) -> None:
        self._kept: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any, wrap: Callable[[], Any]) -> Any:
        """The wrapped handler kept for `method` over `handler`, else `wrap()`'s,
        which must depend only on `handler`, `method` and the interceptor."""
        kept = self._kept.get(method)
        if kept is not None and kept[0] is handler:
            return kept[1]
        wrapped = wrap()
        self._kept[method] = (handler, wrapped)
        return wrapped


class WrappingInterceptor(ServerInterceptor):
    """An interceptor that rebuilds each method's handler with `wrap`, kept
    in a `HandlerCache`."""

    def __init__(self) -> None:
        self._handlers = HandlerCache()

    def wrap(self, handler: Any, method: str) -> Any:
        """The handler to serve `method` with (`handler` itself to leave it);
        reused for later calls, so it depends on nothing else."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        raw: Any = handler_call_details.method
        method = raw.decode() if isinstance(raw, bytes) else str(raw)
        return self._handlers.get(method, handler, lambda: self.wrap(handler, method))
