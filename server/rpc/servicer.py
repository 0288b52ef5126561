"""`chuizi.image.v1.ImageService`: converts, delegates, converts back.

No business rules live here: every RPC turns the proto request into a
domain request, calls the orchestrator and turns the result back into
protobuf. Errors leave through `StatusOnError`, the one place that turns
an exception into a gRPC status (via the table in `status.py`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TypeVar

import grpc
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

from server.domain.deadline import Deadline
from server.domain.errors import ImageServiceError
from server.domain.events import ImageReady, StreamEvent
from server.domain.orchestrator import Orchestrator
from server.rpc import convert
from server.rpc.status import abort, code_for, internal_status, to_status

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[object, object]


class StatusOnError:
    """Async context manager: abort the call with the status for any
    exception its body raises.

    A domain error becomes its code and details from the error table and is
    logged by reason; anything else is logged with its traceback and becomes
    INTERNAL with a fixed message, so no internals reach the caller.
    Cancellation and generator exits pass through untouched.
    """

    def __init__(self, context: Context) -> None:
        self._context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not isinstance(error, Exception):
            return
        if isinstance(error, ImageServiceError):
            status = to_status(error)
            log.info("%s: %s (%s)", code_for(error).name, error.reason, error.message)
        else:
            log.exception("unexpected error", exc_info=error)
            status = internal_status()
        await abort(self._context, status)


def _deadline(context: Context) -> Deadline:
    return Deadline.after(context.time_remaining())


class ImageServicer(pb_grpc.ImageServiceServicer):
    """The gRPC servicer; see the proto for each RPC's contract."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator

    async def Generate(self, request: pb.GenerateRequest, context: Context) -> pb.Generation:
        async with StatusOnError(context):
            domain_request = convert.generate_request(request)
            record = await self._orchestrator.run(domain_request, _deadline(context))
            return convert.generation(record)

    async def Edit(self, request: pb.EditRequest, context: Context) -> pb.Generation:
        async with StatusOnError(context):
            domain_request = convert.edit_request(request)
            record = await self._orchestrator.run(domain_request, _deadline(context))
            return convert.generation(record)

    async def StreamGenerate(
        self, request: pb.GenerateRequest, context: Context
    ) -> AsyncIterator[pb.StreamGenerateResponse]:
        async with StatusOnError(context):
            events = self._orchestrator.stream(
                convert.generate_request(request), _deadline(context)
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    yield _stream_message(event, pb.StreamGenerateResponse)

    async def StreamEdit(
        self, request: pb.EditRequest, context: Context
    ) -> AsyncIterator[pb.StreamEditResponse]:
        async with StatusOnError(context):
            events = self._orchestrator.stream(convert.edit_request(request), _deadline(context))
            async with contextlib.aclosing(events):
                async for event in events:
                    yield _stream_message(event, pb.StreamEditResponse)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[convert.model(m) for m in self._orchestrator.list_models()]
        )

    async def GetGeneration(
        self, request: pb.GetGenerationRequest, context: Context
    ) -> pb.Generation:
        async with StatusOnError(context):
            return convert.generation(
                await self._orchestrator.get_generation(request.generation_id)
            )


M = TypeVar("M", pb.StreamGenerateResponse, pb.StreamEditResponse)


def _stream_message(event: StreamEvent, message: type[M]) -> M:
    out = message()
    if isinstance(event, ImageReady):
        convert.set_image(out.image, event.image)  # in place: the bytes are copied once
    else:
        # The record event carries no image bytes: a copy costs nothing here.
        out.generation.CopyFrom(convert.generation(event.record))
    return out
