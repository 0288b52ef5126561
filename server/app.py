"""The composition root: builds every part from `Settings` and wires them.

Nothing imports this module except the CLI; tests use `create_grpc_service`
with their own settings, backends or store. The gRPC server itself is
assembled in server/rpc/server.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.asgi import AsgiServer
from server.auth.build import CallerAccess, build_access
from server.domain.backends import Backends
from server.domain.catalogue import Catalogue, parse_policies
from server.domain.orchestrator import Orchestrator
from server.domain.output_options import UnsupportedPolicy
from server.domain.ports import BlobStore
from server.domain.retry import RetryPolicy
from server.domain.telemetry import NO_TELEMETRY, ObservedBackend, ObservedStore, Telemetry
from server.observability.metrics import ServiceMetrics, metrics_app
from server.observability.tracing import tracer
from server.providers.registry import build_backends, check_catalogue
from server.rpc.observing import ObservingInterceptor
from server.rpc.server import GrpcServer
from server.settings import Settings
from server.storage.local import LocalDirectoryStore
from server.storage.r2 import R2Store


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


@dataclass
class GrpcService:
    """The running service: the gRPC server and the parts it closes on stop."""

    settings: Settings
    server: GrpcServer
    orchestrator: Orchestrator
    backends: Backends
    store: BlobStore
    record_store: BlobStore | None = None
    metrics: ServiceMetrics | None = None
    metrics_server: AsgiServer | None = None
    access: CallerAccess | None = None

    @property
    def port(self) -> int:
        """The bound gRPC port (the real one when settings asked for 0)."""
        return self.server.port

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        if self.metrics_server is not None:
            await self.metrics_server.start()
        await self.server.start()
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Drain in-flight RPCs for `grace` seconds (default: the setting),
        then close the backends and stores they were using."""
        await self.server.drain(self.settings.shutdown_grace_s if grace is None else grace)
        await self.backends.aclose()
        await self.store.aclose()
        if self.record_store is not None:
            await self.record_store.aclose()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.access is not None:
            await self.access.aclose()

    async def wait(self) -> None:
        await self.server.wait()


async def create_grpc_service(
    settings: Settings,
    *,
    backends: Backends | None = None,
    store: BlobStore | None = None,
    catalogue: Catalogue | None = None,
) -> GrpcService:
    """Build (but do not start) the service from `settings`."""
    catalogue = catalogue or Catalogue.load(policies=parse_policies(settings.retired_models))
    check_catalogue(catalogue)  # a bad catalogue `options` value fails start-up
    metrics = ServiceMetrics({m.name: m.backend for m in catalogue}) if settings.metrics else None
    telemetry: Telemetry = metrics or NO_TELEMETRY
    access = build_access(settings)
    if backends is None:
        configured, missing = build_backends(
            settings, {m.backend for m in catalogue}, shared=access.upstream_slots
        )
        backends = Backends(
            {key: ObservedBackend(backend, key, telemetry) for key, backend in configured.items()},
            missing,
        )
    store = store or build_store(settings)
    record_store = build_record_store(settings)
    orchestrator = Orchestrator(
        catalogue,
        backends,
        ObservedStore(store, telemetry),
        storage_retry=RetryPolicy(
            attempts=settings.storage_attempts,
            base_delay=settings.upstream_backoff_base_s,
            max_delay=settings.upstream_backoff_max_s,
        ),
        default_deadline_s=settings.default_deadline_s,
        record_store=ObservedStore(record_store, telemetry) if record_store else None,
        telemetry=telemetry,
        unsupported_parameters=UnsupportedPolicy(settings.unsupported_parameters),
        usage=access.usage,
        leases=access.leases,
    )
    authenticator = access.authenticator
    server = GrpcServer.build(
        settings,
        orchestrator,
        interceptors=[ObservingInterceptor(metrics, tracer("server.rpc"))],
        authenticate=None if authenticator is None else authenticator.authenticate,
    )
    metrics_server = None
    if metrics is not None:
        metrics_server = AsgiServer(
            metrics_app(metrics.registry), settings.metrics_host, settings.metrics_port
        )
    return GrpcService(
        settings,
        server,
        orchestrator,
        backends,
        store,
        record_store,
        metrics,
        metrics_server,
        access,
    )
