"""`stream=true`: server-sent events from `StreamGenerate` / `StreamEdit`.

Event format (each event is `event: <name>` plus one `data:` JSON line):

- one `image_generation.completed` (`image_edit.completed` for edits) per
  image, the moment it is stored, in the order images finish:
  `{"type", "index", "created_at", "size", "output_format", "b64_json" | "url",
  "revised_prompt"?}`. OpenAI's own name for a finished image; the
  `b64_json` / `url` choice follows `response_format` as in the
  non-streaming body (an unstored image always comes as `b64_json`).
  OpenAI's `*.partial_image` events are not sent: the upstreams produce no
  partial renders.
- last, `data: [DONE]` and then one `x_chuizi.generation`:
  `{"type", "created", "data", "x_chuizi"}`, the non-streaming body with URLs
  only (the bytes went out in the image events). The `[DONE]` sentinel ends
  the stream for OpenAI's SDKs, which would otherwise parse any further
  event as an image event (their image-stream type is a union of image
  events only); a client reading the raw stream finds the record after it.
- on a failure after the stream started, an `error` event
  `{"type": "error", "error": {message, type, param, code}}`, then the end.
  OpenAI's SDKs raise `APIError` for it.
- `: keep-alive` comments while waiting, so idle proxies keep the
  connection open through minute-long generations.

A failure that arrives within `ERROR_STATUS_WINDOW_S` of the call (bad
input, unknown model: the service rejects those at once) is answered as a
plain JSON error with its HTTP status instead of a 200 stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from chuizi.image.v1 import image_service_pb2 as pb
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from server.rest.drain import ShuttingDown
from server.rest.errors import INTERNAL, SERVER, RestError, from_rpc_error
from server.rest.responses import (
    BodyBuilder,
    Chunk,
    body_pieces,
    dumps,
    write_image_fields,
    write_images,
    x_chuizi,
)
from server.rest.upstream import ClientDisconnected, DisconnectWatcher
from server.rest.wire import ImageBytes, Received

log = logging.getLogger(__name__)

ERROR_STATUS_WINDOW_S = 1.0
KEEPALIVE_S = 15.0
GENERATION_IMAGE_EVENT = "image_generation.completed"
EDIT_IMAGE_EVENT = "image_edit.completed"
RECORD_EVENT = "x_chuizi.generation"
ERROR_EVENT = "error"
# What OpenAI's SDKs stop reading at (see the module doc).
DONE = "data: [DONE]\n\n"

_KEEPALIVE = b": keep-alive\n\n"
_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


# The generated stub is untyped: `StreamGenerate` and `StreamEdit` calls.
StreamCall = grpc.aio.UnaryStreamCall[Any, Any]


def image_event(
    name: str, image: pb.Image, *, b64: bool, data: ImageBytes | None = None
) -> list[Chunk]:
    """One image event's bytes (see module doc); `data` is the image's bytes
    when they are not in `image` (`server.rest.wire`)."""
    out = BodyBuilder()
    # name, index and the timestamp need no JSON escaping.
    out.text(
        f'event: {name}\ndata: {{"type":"{name}","index":{image.index},'
        f'"created_at":{int(time.time())},"size":"{image.width}x{image.height}",'
        '"output_format":'
    )
    out.value(_FORMATS.get(image.mime_type, image.mime_type.removeprefix("image/")))
    out.text(",")
    write_image_fields(out, image, image.data if data is None else data, b64=b64)
    out.text("}\n\n")
    return out.chunks()


def record_event(generation: pb.Generation) -> list[Chunk]:
    """The `[DONE]` sentinel, then the final `x_chuizi.generation` event's bytes."""
    out = BodyBuilder()
    out.text(DONE)
    out.text(f'event: {RECORD_EVENT}\ndata: {{"type":"{RECORD_EVENT}","created":')
    out.value(generation.created)
    out.text(',"data":')
    write_images(out, generation.images, b64=False)
    out.text(',"x_chuizi":')
    out.value(x_chuizi(generation))
    out.text("}\n\n")
    return out.chunks()


def error_event(error: RestError) -> bytes:
    return f"event: {ERROR_EVENT}\ndata: {dumps({'type': 'error', **error.body()})}\n\n".encode()


async def start_stream(
    call: StreamCall,
    watcher: DisconnectWatcher,
    *,
    image_event_name: str,
    b64: bool,
) -> Response:
    """Wait briefly for the first message, then answer with the event stream.

    Raises `RestError` for a call that failed within the window, and
    `ClientDisconnected` (after cancelling the call) if the client left.
    """
    first: asyncio.Future[object] = asyncio.ensure_future(call.read())
    try:
        done = await watcher.wait(first, max_wait_s=ERROR_STATUS_WINDOW_S)
    except BaseException:
        first.cancel()
        call.cancel()
        raise
    if done and isinstance(first.exception(), grpc.aio.AioRpcError):
        error = first.exception()
        assert isinstance(error, grpc.aio.AioRpcError)
        raise from_rpc_error(error)
    return EventStreamResponse(call, first, watcher, image_event_name=image_event_name, b64=b64)


class EventStreamResponse(Response):
    """The `text/event-stream` response relaying one streaming call."""

    media_type = "text/event-stream"

    def __init__(
        self,
        call: StreamCall,
        first: asyncio.Future[object],
        watcher: DisconnectWatcher,
        *,
        image_event_name: str,
        b64: bool,
    ) -> None:
        self._call = call
        self._pending = first
        self._watcher = watcher
        self._image_event = image_event_name
        self._b64 = b64
        self.status_code = 200
        self.background = None
        self.init_headers(
            {
                "cache-control": "no-cache",
                # Tell nginx-style proxies not to buffer the stream.
                "x-accel-buffering": "no",
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            await self._relay(send)
        except ClientDisconnected:
            return
        except ShuttingDown as error:
            # The grace ran out mid-stream: the images sent so far stand,
            # and the client learns why the record will not follow.
            await _send(send, error_event(error))
        finally:
            self._watcher.close()
            self._pending.cancel()
            self._call.cancel()  # no-op once the call has finished
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _relay(self, send: Send) -> None:
        while True:
            if not await self._watcher.wait(self._pending, max_wait_s=KEEPALIVE_S):
                await _send(send, _KEEPALIVE)
                continue
            try:
                message = self._pending.result()
            except grpc.aio.AioRpcError as error:
                await _send(send, error_event(from_rpc_error(error)))
                return
            except Exception:
                log.exception("stream relay failed")
                await _send(
                    send, error_event(RestError(500, "Internal error.", type=SERVER, code=INTERNAL))
                )
                return
            if not isinstance(message, Received):
                return  # grpc.aio.EOF: the call has finished
            event = message.message
            kind = event.WhichOneof("event")
            if kind == "image":
                chunks = image_event(
                    self._image_event, event.image, b64=self._b64, data=message.image_data[0]
                )
            elif kind == "generation":
                chunks = record_event(event.generation)
            else:
                chunks = []
            for piece in body_pieces(chunks):
                await _send(send, piece)
            self._pending = asyncio.ensure_future(self._call.read())


async def _send(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})
