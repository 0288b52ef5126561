"""The gRPC side of a graceful shutdown: health first, then the drain.

Kubernetes' gRPC probe calls `grpc.health.v1.Health/Check` on a fresh
connection. If the server stopped accepting calls the moment the drain
began, that probe would get "connection refused" rather than NOT_SERVING,
and an open `Watch` stream would hold the process for the whole grace
period. So `GrpcServer.drain` (server.py):

1. `DrainingHealth.enter_graceful_shutdown()`: every service reports
   NOT_SERVING, and every `Watch` stream sends that and ends;
2. keeps accepting calls, Check answering NOT_SERVING, until no image RPC
   is in flight (`InFlight`, an interceptor counting them) or the grace
   runs out;
3. only then stops the server, with what is left of the grace.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from server.inflight import InFlightCounter
from server.rpc.handlers import Context, WrappingInterceptor, wrap_unary_request

# grpc_health ships no type information: a ServingStatus is an int.
Status = int
_SERVING: Status = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: Status = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN: Status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
# Calls that are not work to wait for: probes and tooling.
_NOT_COUNTED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class DrainingHealth:
    """`grpc.health.v1.Health` whose Watch streams end when the drain begins.

    Otherwise like grpc_health's asyncio servicer: `""` starts SERVING,
    unknown services are NOT_FOUND on Check and SERVICE_UNKNOWN on Watch,
    and List reports every known service.
    """

    def __init__(self) -> None:
        self._status: dict[str, Status] = {"": _SERVING}
        self._draining = False
        # Replaced on every change; Watch streams wait on the current one.
        self._changed = asyncio.Event()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "Unknown service.")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: Context
    ) -> health_pb2.HealthListResponse:
        response = health_pb2.HealthListResponse()
        for service, status in self._status.items():
            response.statuses[service].status = status
        return response

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: Status | None = None
        while True:
            changed = self._changed
            status = self._status.get(request.service, _UNKNOWN)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
                # Read again: the status may have changed (the drain begun)
                # while the message was being sent, and the caller must
                # still see the last one before the stream ends.
                continue
            if self._draining:
                return
            await changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def set(self, service: str, status: Status) -> None:
        """Set `service`'s status; ignored once draining (it stays NOT_SERVING)."""
        if self._draining:
            return
        self._status[service] = status
        self._notify()

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for every service from now on; Watch streams end."""
        self._draining = True
        for service in self._status:
            self._status[service] = _NOT_SERVING
        self._notify()


class InFlight(WrappingInterceptor):
    """Counts the calls in flight, probes and reflection aside."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = InFlightCounter()

    def wrap(self, handler: Any, method: str) -> Any:
        if method.startswith(_NOT_COUNTED):
            return handler
        return wrap_unary_request(handler, around=self.calls.counted)
