"""The sidecar's side of the gRPC connection: channel, call metadata, cancellation.

One long-lived channel per process (gRPC multiplexes every request over it
and reconnects on its own); each request passes the caller's
`Authorization` header and a request id as call metadata, and a deadline of
`rest_upstream_timeout_s`. When the HTTP client goes away mid-request the
upstream call is cancelled, so the service stops paying for images nobody
will receive.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
from starlette.types import Receive

from server.observability import request_context
from server.rest.drain import Drain, ShuttingDown
from server.rest.errors import (
    AUTHENTICATION,
    HEADER_TOO_LARGE,
    INVALID_AUTHORIZATION_HEADER,
    RestError,
)
from server.rest.observing import access_fields_interceptors
from server.rest.wire import decode_generation, decode_stream_edit, decode_stream_generate
from server.settings import Settings

T = TypeVar("T")

# What gRPC accepts in an ASCII metadata value.
_METADATA_VALUE = re.compile(r"^[\x20-\x7e]*$")
# gRPC refuses call metadata over 8 KiB at random (a "soft" limit) and always
# over 16 KiB, as RESOURCE_EXHAUSTED, which reads as a retryable quota. With
# the request id and gRPC's own headers (~700 bytes) this stays under 8 KiB.
MAX_AUTHORIZATION_BYTES = 6 * 1024


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments: message limits that fit inline images and edit inputs."""
    limit = max(settings.max_message_bytes, settings.rest_max_upload_bytes + 1024 * 1024)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
    ]


def open_channel(settings: Settings, target: str | None = None) -> grpc.aio.Channel:
    """The sidecar's channel to `target` (default `settings.rest_upstream`).

    Plaintext: the sidecar runs beside the service (same pod or host). Call
    from inside the event loop that will use it.
    """
    return grpc.aio.insecure_channel(
        target or settings.rest_upstream,
        options=channel_options(settings),
        interceptors=access_fields_interceptors(),
    )


_SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"].full_name


class Upstream:
    """The generated stub plus what every call carries.

    The methods whose answers carry images (`generate`, `edit`,
    `stream_generate`, `stream_edit`, `get_generation`) answer with
    `server.rest.wire.Received`: the message, and its images' bytes as
    views of what the channel received, never copied before base64.
    """

    def __init__(self, channel: grpc.aio.Channel, settings: Settings) -> None:
        self.channel = channel
        # The generated stub is untyped; call sites annotate what they get.
        self.stub: Any = pb_grpc.ImageServiceStub(channel)  # type: ignore[no-untyped-call]
        self.timeout_s = settings.rest_upstream_timeout_s
        unary, stream = channel.unary_unary, channel.unary_stream
        self.generate: Any = unary(*_method("Generate", pb.GenerateRequest, decode_generation))
        self.edit: Any = unary(*_method("Edit", pb.EditRequest, decode_generation))
        self.get_generation: Any = unary(
            *_method("GetGeneration", pb.GetGenerationRequest, decode_generation)
        )
        self.stream_generate: Any = stream(
            *_method("StreamGenerate", pb.GenerateRequest, decode_stream_generate)
        )
        self.stream_edit: Any = stream(*_method("StreamEdit", pb.EditRequest, decode_stream_edit))


def _method(name: str, request: Any, decode: Any) -> tuple[str, Any, Any]:
    """A method's path, request serializer and response deserializer."""
    return f"/{_SERVICE}/{name}", request.SerializeToString, decode


@dataclass(frozen=True)
class CallContext:
    """Per-request values: the request id and the metadata sent upstream."""

    request_id: str
    authorization: str | None
    trace: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> CallContext:
        """The request id the middleware chose, else `X-Request-Id` if usable,
        else a new one; and the middleware's trace context, if it traces."""
        serving = request_context.current()
        if serving is not None:
            return cls(serving.request_id, headers.get("authorization"), serving.trace_metadata)
        request_id = request_context.request_id_or_new(headers.get("x-request-id"))
        return cls(request_id, headers.get("authorization"))

    def check_authorization(self) -> None:
        """Refuse an Authorization header that cannot travel as gRPC metadata:
        431 when too long (never a retryable status), 401 when malformed."""
        if self.authorization is None:
            return
        if len(self.authorization) > MAX_AUTHORIZATION_BYTES:
            raise RestError(
                431,
                f"The Authorization header is longer than {MAX_AUTHORIZATION_BYTES} bytes.",
                param="Authorization",
                code=HEADER_TOO_LARGE,
                headers={"x-should-retry": "false"},
            )
        if not _METADATA_VALUE.match(self.authorization):
            raise RestError(
                401,
                "The Authorization header is malformed.",
                type=AUTHENTICATION,
                code=INVALID_AUTHORIZATION_HEADER,
            )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """`x-request-id`, `authorization` when the caller sent one, and the
        trace context when the request is traced."""
        sent = (("x-request-id", self.request_id), *self.trace)
        if self.authorization is None:
            return sent
        return (*sent, ("authorization", self.authorization))


class ClientDisconnected(Exception):
    """The HTTP client closed the connection before the response was sent."""


class DisconnectWatcher:
    """Watches an HTTP request's `receive` channel for the client leaving,
    and the sidecar's shutdown grace for running out.

    Start it only after the request body has been read: from then on the
    only message `receive` can yield is `http.disconnect`.
    """

    def __init__(self, receive: Receive, drain: Drain | None = None) -> None:
        self._task = asyncio.ensure_future(self._watch(receive))
        self._expired: asyncio.Future[None] | None = (
            asyncio.ensure_future(drain.wait_expired()) if drain is not None else None
        )

    @staticmethod
    async def _watch(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def wait(self, task: asyncio.Future[Any], max_wait_s: float | None = None) -> bool:
        """Wait for `task`: True once it is done, False after `max_wait_s`.

        Raises `ClientDisconnected` if the client left first, and
        `ShuttingDown` if the shutdown grace ran out first.
        """
        watched = {task, self._task} if self._expired is None else {task, self._task, self._expired}
        done, _ = await asyncio.wait(
            watched, timeout=max_wait_s, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            return True
        if self._task in done:
            raise ClientDisconnected()
        if self._expired is not None and self._expired in done:
            raise ShuttingDown()
        return False

    async def run(self, call: Awaitable[T]) -> T:
        """Await `call`; cancel it and raise `ClientDisconnected` if the client leaves."""
        task: asyncio.Future[T] = asyncio.ensure_future(call)
        try:
            await self.wait(task)
            return task.result()
        finally:
            # Cancelling the task cancels the RPC it awaits (grpc.aio does so
            # on CancelledError), also when this handler itself is cancelled.
            task.cancel()

    def close(self) -> None:
        self._task.cancel()
        if self._expired is not None:
            self._expired.cancel()
