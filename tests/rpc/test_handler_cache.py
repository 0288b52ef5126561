"""The server's interceptors build a method's wrapped handler once and serve
it again while the handler beneath is the same object
(`server.rpc.handlers.HandlerCache`); a new handler beneath is wrapped anew."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.rpc.draining import InFlight
from server.rpc.observing import ObservingInterceptor
from server.rpc.undecodable import RejectUndecodable

METHOD = "/chuizi.image.v1.ImageService/ListModels"


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _handler() -> Any:
    async def behaviour(request: Any, context: Any) -> Any:
        return pb.ListModelsResponse()

    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=pb.ListModelsRequest.FromString,
        response_serializer=pb.ListModelsResponse.SerializeToString,
    )


def _returning(handler: Any) -> Callable[[grpc.HandlerCallDetails], Awaitable[Any]]:
    async def continuation(details: grpc.HandlerCallDetails) -> Any:
        return handler

    return continuation


@pytest.mark.parametrize(
    "make",
    [RejectUndecodable, InFlight, lambda: ObservingInterceptor(None)],
    # Fixed ids: pytest-xdist workers must collect the same names (str() of a
    # lambda holds its address, which differs per process).
    ids=["RejectUndecodable", "InFlight", "ObservingInterceptor"],
)
async def test_same_handler_beneath_is_wrapped_once(make: Callable[[], Any]) -> None:
    interceptor = make()
    beneath = _handler()
    first = await interceptor.intercept_service(_returning(beneath), _Details(METHOD))
    second = await interceptor.intercept_service(_returning(beneath), _Details(METHOD))
    assert first is not beneath  # wrapped
    assert second is first

    other = _handler()
    third = await interceptor.intercept_service(_returning(other), _Details(METHOD))
    assert third is not first  # a handler rebuilt beneath is wrapped again
    assert third.unary_unary is not first.unary_unary


async def test_unknown_methods_are_not_kept() -> None:
    interceptor = RejectUndecodable()
    assert await interceptor.intercept_service(_returning(None), _Details(METHOD)) is None
