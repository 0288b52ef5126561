"""Request bodies that are not the method's message: INVALID_ARGUMENT.

grpc.aio answers a body its deserializer cannot parse with UNKNOWN and a
message naming the Python exception class (`Unexpected <class
'google.protobuf.message.DecodeError'>: ...`). This interceptor lets the
deserializer return a marker instead, and the call then fails with
INVALID_ARGUMENT and the service's usual details (`ErrorInfo`, a
`BadRequest` violation on `request`), naming only the expected message type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from server.domain.errors import FieldViolation, InvalidArgument
from server.rpc.handlers import Context, WrappingInterceptor, wrap_unary_request
from server.rpc.status import abort, to_status


class _Undecodable:
    """What an unparsable request body deserializes to."""


_UNDECODABLE = _Undecodable()


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    # The generated code passes `SomeRequest.FromString`, bound to the class.
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, or whatever a custom codec raises
            return _UNDECODABLE

    return parse


def _refuse(message_name: str) -> Callable[[Any, Context], Awaitable[None]]:
    status = to_status(
        InvalidArgument(
            [FieldViolation("request", f"is not a valid {message_name} message")],
            message=f"The request body is not a valid {message_name} message.",
        )
    )

    async def before(request: Any, context: Context) -> None:
        if request is _UNDECODABLE:
            await abort(context, status)

    return before


class RejectUndecodable(WrappingInterceptor):
    """Turns unparsable request bodies into INVALID_ARGUMENT (module doc)."""

    def wrap(self, handler: Any, method: str) -> Any:
        deserializer = getattr(handler, "request_deserializer", None)
        if deserializer is None:
            return handler
        return wrap_unary_request(
            handler,
            before=_refuse(_message_name(deserializer)),
            request_deserializer=_tolerant(deserializer),
        )
