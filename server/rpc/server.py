"""The gRPC server: channel options, the image service, health, reflection
and the graceful drain.

`GrpcServer.build` assembles and binds it; the composition root (server/app.py)
hands it the orchestrator and owns everything else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.domain.orchestrator import Orchestrator
from server.netloc import host_port
from server.rpc.auth import Authenticate, AuthInterceptor
from server.rpc.draining import DrainingHealth, InFlight
from server.rpc.servicer import ImageServicer
from server.rpc.undecodable import RejectUndecodable
from server.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageService"].full_name
_HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_MAX_PENDING_CALLS = 10_000
_MAX_UNREQUESTED_S = 600


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments for the gRPC server (see README: Configuration)."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Ageing connections out makes clients re-resolve, which is how
        # L4-balanced gRPC spreads onto new pods behind a Kubernetes Service.
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # Two servers silently sharing a port would split traffic between
        # versions; fail loudly instead.
        ("grpc.so_reuseport", 0),
        # Calls the transport has accepted but the asyncio server has not
        # picked up yet. grpc core's defaults (1,000, then random early
        # rejection up to 3,000) cancel about one call in nine of a burst of
        # 2,000 callers, although a call waiting on an upstream costs little.
        ("grpc.server.max_pending_requests", _MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", 2 * _MAX_PENDING_CALLS),
        # ... and how long such a call may wait there before grpc core cancels
        # it (default 30 s). A burst of 10,000 callers takes the event loop
        # longer than that to pick up, and the caller's own deadline already
        # bounds the wait, so the queue only cancels what nobody waits for.
        ("grpc.server_max_unrequested_time_in_server", _MAX_UNREQUESTED_S),
    ]


class GrpcServer:
    """A bound (not yet started) gRPC server with the image service, health
    and, if `settings.reflection`, reflection."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: DrainingHealth,
        port: int,
        in_flight: InFlight,
    ) -> None:
        self._server = server
        self._health = health_servicer
        self._in_flight = in_flight
        self.port = port

    @classmethod
    def build(
        cls,
        settings: Settings,
        orchestrator: Orchestrator,
        *,
        interceptors: Sequence[Any] = (),
        authenticate: Authenticate | None = None,
    ) -> GrpcServer:
        """Assemble the server and bind `settings.grpc_host:grpc_port`.

        With `authenticate`, every ImageService call goes through the
        `AuthInterceptor`; without it calls are not authenticated
        (`IMAGE_SERVICE_AUTH=none`), which is logged as a warning.

        grpc raises `RuntimeError` when the address cannot be bound,
        including when another server holds the port (`grpc.so_reuseport`
        is off).
        """
        in_flight = InFlight()
        # Authentication right inside the observers, so the access log and
        # metrics see refused calls too; undecodable bodies are checked
        # after it, for callers who got in.
        auth: list[Any] = []
        if authenticate is not None:
            auth.append(AuthInterceptor(authenticate))
        else:
            log.warning(
                "ImageService calls are NOT authenticated (IMAGE_SERVICE_AUTH=none): "
                "run this way only behind a gateway that authenticates every caller"
            )
        server = grpc.aio.server(
            # The drain counts every call, whatever the others do with it;
            # undecodable bodies are refused innermost, so the others (access
            # log, metrics) see that INVALID_ARGUMENT like any other status.
            interceptors=[in_flight, *interceptors, *auth, RejectUndecodable()],
            options=server_options(settings),
        )
        # The generated *_pb2_grpc module carries no annotations.
        pb_grpc.add_ImageServiceServicer_to_server(ImageServicer(orchestrator), server)  # type: ignore[no-untyped-call]
        health_servicer = DrainingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if settings.reflection:
            names = [SERVICE_NAME, _HEALTH_SERVICE_NAME, reflection.SERVICE_NAME]
            reflection.enable_server_reflection(names, server)
        # "[::]" is dual-stack; grpc falls back to IPv4 alone where the kernel
        # has no IPv6.
        port = server.add_insecure_port(host_port(settings.grpc_host, settings.grpc_port))
        return cls(server, health_servicer, port, in_flight)

    async def start(self) -> None:
        """Accept calls and report SERVING (overall and for the image service)."""
        await self._server.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def drain(self, grace: float) -> None:
        """Report NOT_SERVING first (readiness flips; Watch streams end), let
        in-flight calls finish for up to `grace` seconds while Health/Check
        still answers, then stop (server/rpc/draining.py)."""
        ends = time.monotonic() + grace
        await self._health.enter_graceful_shutdown()
        await self._in_flight.calls.wait_idle(grace)
        await self._server.stop(max(0.0, ends - time.monotonic()))

    async def wait(self) -> None:
        """Block until the server has stopped."""
        await self._server.wait_for_termination()
