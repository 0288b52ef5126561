"""The composition root: builds every part from `Settings` and wires them.

Nothing imports this module except the CLI; tests use `create_grpc_service`
with their own settings, backends or store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.domain.backends import Backends
from server.domain.catalogue import Catalogue
from server.domain.orchestrator import Orchestrator
from server.domain.ports import BlobStore
from server.domain.retry import RetryPolicy
from server.providers.registry import build_backends
from server.rpc.servicer import ImageServicer
from server.settings import Settings
from server.storage.local import LocalDirectoryStore
from server.storage.r2 import R2Store

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageService"].full_name
_MAX_PENDING_CALLS = 10_000


def build_store(settings: Settings) -> BlobStore:
    """The blob store `settings.storage` names."""
    if settings.storage == "local":
        return LocalDirectoryStore(settings.local_storage_dir, settings.local_public_base_url)
    if settings.storage == "r2":
        return _r2_store(settings, settings.r2_bucket)
    raise ValueError(f"storage {settings.storage!r} is not available in this build")


def build_record_store(settings: Settings) -> BlobStore | None:
    """The store of generation records when it is not the image store
    (`IMAGE_SERVICE_R2_RECORDS_BUCKET`), else None."""
    if settings.storage == "r2" and settings.r2_records_bucket.strip():
        return _r2_store(settings, settings.r2_records_bucket.strip())
    return None


def _r2_store(settings: Settings, bucket: str) -> R2Store:
    settings.check_r2()  # names any missing IMAGE_SERVICE_R2_* variable
    key_id, secret = settings.r2_access_key_id, settings.r2_secret_access_key
    if key_id is None or secret is None:  # excluded by check_r2; narrows the types
        raise ValueError("IMAGE_SERVICE_R2_ACCESS_KEY_ID and _SECRET_ACCESS_KEY are required")
    return R2Store(
        endpoint_url=settings.r2_endpoint_url,
        bucket=bucket,
        access_key_id=key_id.get_secret_value(),
        secret_access_key=secret.get_secret_value(),
        public_base_url=settings.r2_public_base_url,
        region=settings.r2_region,
        presign_ttl_s=settings.r2_presign_ttl_s,
        max_connections=settings.r2_max_connections,
        connect_timeout_s=settings.r2_connect_timeout_s,
        read_timeout_s=settings.r2_read_timeout_s,
    )


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 literal in brackets (`[::]:50051`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    ]


@dataclass
class GrpcService:
    """A gRPC server with the image service, health and reflection."""

    settings: Settings
    server: grpc.aio.Server
    # grpc_health's asyncio servicer ships without type information.
    health: Any
    orchestrator: Orchestrator
    backends: Backends
    store: BlobStore
    port: int = 0
    record_store: BlobStore | None = None

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, then drain in-flight RPCs for `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_s if grace is None else grace)
        await self.backends.aclose()
        await self.store.aclose()
        if self.record_store is not None:
            await self.record_store.aclose()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def create_grpc_service(
    settings: Settings,
    *,
    backends: Backends | None = None,
    store: BlobStore | None = None,
) -> GrpcService:
    """Build (but do not start) the service from `settings`."""
    catalogue = Catalogue.load()
    if backends is None:
        configured, missing = build_backends(settings, {m.backend for m in catalogue})
        backends = Backends(configured, missing)
    store = store or build_store(settings)
    record_store = build_record_store(settings)
    orchestrator = Orchestrator(
        catalogue,
        backends,
        store,
        storage_retry=RetryPolicy(
            attempts=settings.storage_attempts,
            base_delay=settings.upstream_backoff_base_s,
            max_delay=settings.upstream_backoff_max_s,
        ),
        default_deadline_s=settings.default_deadline_s,
        record_store=record_store,
    )
    server = grpc.aio.server(options=server_options(settings))
    # The generated *_pb2_grpc module carries no annotations.
    pb_grpc.add_ImageServiceServicer_to_server(ImageServicer(orchestrator), server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    if settings.reflection:
        names.append(reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    # "[::]" is dual-stack; grpc falls back to IPv4 alone where the kernel
    # has no IPv6.
    port = server.add_insecure_port(host_port(settings.grpc_host, settings.grpc_port))
    if port == 0:
        raise OSError(f"could not bind {settings.grpc_host}:{settings.grpc_port}")
    return GrpcService(
        settings, server, health_servicer, orchestrator, backends, store, port, record_store
    )
