"""The one place API keys are enforced: a gRPC server interceptor.

Every call to `chuizi.image.v1.ImageService` (generated stubs, grpcurl and
the REST sidecar, which only forwards the caller's `Authorization` header as
`authorization` metadata) passes through `AuthInterceptor`: it resolves the
key into a domain `Caller` with `authenticate` and runs the handler under
`acting_as(caller)`, or ends the call with the error's status
(UNAUTHENTICATED, RESOURCE_EXHAUSTED with RetryInfo, UNAVAILABLE). What the
caller may then do (models, quotas, whose records it sees) the domain
decides from the `Caller`. Health and reflection are not intercepted.

Neither the key nor the header is ever logged or echoed: failures log the
reason only, and the access line carries the key's public id.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.domain.callers import Caller, acting_as
from server.domain.errors import ImageServiceError
from server.observability import request_context
from server.rpc.status import abort, to_status

log = logging.getLogger(__name__)

Authenticate = Callable[[str | None], Awaitable[Caller]]
"""Resolves the `authorization` metadata value (None: absent) into a Caller;
raises an `ImageServiceError` to refuse the call."""

PROTECTED_PREFIX = "/chuizi.image.v1.ImageService/"


def _authorization(details: grpc.HandlerCallDetails) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates every ImageService call (see module doc)."""

    def __init__(self, authenticate: Authenticate, prefix: str = PROTECTED_PREFIX) -> None:
        self._authenticate = authenticate
        self._prefix = prefix

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or not method.startswith(self._prefix):
            return handler
        authorization = _authorization(handler_call_details)
        # Every ImageService RPC takes one request message; the two shapes
        # are unary and server streaming.
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, authorization, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, authorization, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise TypeError(f"{method}: client-streaming RPCs are not authenticated here")

    async def _caller(
        self, authorization: str | None, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Caller:
        try:
            caller = await self._authenticate(authorization)
        except ImageServiceError as error:
            log.info("%s refused: %s", method, error.reason)
            status = to_status(error)
            await abort(context, status)
        request = request_context.current()
        if request is not None:
            request.key_id = caller.key_id  # the access line names the key by its id
        return caller

    def _unary(
        self, inner: Callable[..., Any], authorization: str | None, method: str
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def behaviour(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            caller = await self._caller(authorization, method, context)
            with acting_as(caller):
                return await inner(request, context)

        return behaviour

    def _streaming(
        self, inner: Callable[..., Any], authorization: str | None, method: str
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        async def behaviour(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            caller = await self._caller(authorization, method, context)
            with acting_as(caller):
                async for message in inner(request, context):
                    yield message

        return behaviour
