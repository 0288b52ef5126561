"""`chuizi.image.v1.ImageService`: converts, delegates, converts back.

No business rules live here: every RPC turns the proto request into a
domain request, calls the orchestrator and turns the result (or the domain
error, through `status.py`) back into protobuf.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

from server.domain.deadline import Deadline
from server.domain.errors import ImageServiceError
from server.domain.events import ImageReady, StreamEvent
from server.domain.orchestrator import Orchestrator
from server.rpc import convert
from server.rpc.status import code_for, internal_status, to_status

log = logging.getLogger(__name__)
T = TypeVar("T")


def _deadline(context: grpc.aio.ServicerContext[object, object]) -> Deadline:
    return Deadline.after(context.time_remaining())


async def _abort(context: grpc.aio.ServicerContext[object, object], error: Exception) -> None:
    if isinstance(error, ImageServiceError):
        status = to_status(error)
        log.info("%s: %s (%s)", code_for(error).name, error.reason, error.message)
    else:
        log.exception("unexpected error", exc_info=error)
        status = internal_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


class ImageServicer(pb_grpc.ImageServiceServicer):
    """The gRPC servicer; see the proto for each RPC's contract."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator

    async def _unary(
        self, context: grpc.aio.ServicerContext[object, object], call: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            return await call()
        except Exception as error:
            await _abort(context, error)
            raise  # unreachable: abort raises

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.Generation:
        async def call() -> pb.Generation:
            domain_request = convert.generate_request(request)
            return convert.generation(
                await self._orchestrator.run(domain_request, _deadline(context))
            )

        return await self._unary(context, call)

    async def Edit(
        self, request: pb.EditRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.Generation:
        async def call() -> pb.Generation:
            domain_request = convert.edit_request(request)
            return convert.generation(
                await self._orchestrator.run(domain_request, _deadline(context))
            )

        return await self._unary(context, call)

    async def StreamGenerate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.StreamGenerateResponse]:
        try:
            events = self._orchestrator.stream(
                convert.generate_request(request), _deadline(context)
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    yield _stream_message(event, pb.StreamGenerateResponse)
        except Exception as error:
            await _abort(context, error)

    async def StreamEdit(
        self, request: pb.EditRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.StreamEditResponse]:
        try:
            events = self._orchestrator.stream(convert.edit_request(request), _deadline(context))
            async with contextlib.aclosing(events):
                async for event in events:
                    yield _stream_message(event, pb.StreamEditResponse)
        except Exception as error:
            await _abort(context, error)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[convert.model(m) for m in self._orchestrator.list_models()]
        )

    async def GetGeneration(
        self, request: pb.GetGenerationRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.Generation:
        async def call() -> pb.Generation:
            record = await self._orchestrator.get_generation(request.generation_id)
            return convert.generation(record)

        return await self._unary(context, call)


M = TypeVar("M", pb.StreamGenerateResponse, pb.StreamEditResponse)


def _stream_message(event: StreamEvent, message: type[M]) -> M:
    out = message()
    if isinstance(event, ImageReady):
        convert.set_image(out.image, event.image)  # in place: the bytes are copied once
    else:
        # The record event carries no image bytes: a copy costs nothing here.
        out.generation.CopyFrom(convert.generation(event.record))
    return out
