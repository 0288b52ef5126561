"""Server-side commands: `serve`, `sandbox` and `dev`.

Heavy modules (the app, SDK-backed providers) are imported inside the
handlers so that client commands stay quick to start.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from server.allocator import keep_freed_buffers
from server.startup_heap import freeze_startup_objects


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `serve`, `sandbox` and `dev` commands."""
    serve = subparsers.add_parser(
        "serve", help="run the gRPC server (configured from IMAGE_SERVICE_* variables)"
    )
    serve.add_argument("--host", help="bind address (default: IMAGE_SERVICE_GRPC_HOST)")
    serve.add_argument("--port", type=int, help="gRPC port (default: IMAGE_SERVICE_GRPC_PORT)")
    serve.set_defaults(func=_serve)

    sandbox = subparsers.add_parser("sandbox", help="run only the provider emulators")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8090)
    sandbox.set_defaults(func=_sandbox)

    dev = subparsers.add_parser(
        "dev",
        help="gRPC server + REST sidecar + local media + emulators, no credentials needed",
    )
    dev.add_argument("--grpc-port", type=int, default=50051)
    dev.add_argument("--http-port", type=int, default=8080)
    dev.add_argument("--sandbox-port", type=int, default=0, help="emulators' port (0: any)")
    dev.add_argument(
        "--metrics-port",
        type=int,
        help="the gRPC server's Prometheus port (default: IMAGE_SERVICE_METRICS_PORT; 0: any)",
    )
    dev.set_defaults(func=_dev)


def _configure_logging(level: str, fmt: str = "text", *, traced_as: str = "") -> None:
    """Logging for the process; and tracing as `traced_as`, if `OTEL_*` asks for it."""
    from server.observability.logs import configure_logging
    from server.observability.tracing import setup_tracing

    configure_logging(level, "json" if fmt == "json" else "text")
    if traced_as:
        setup_tracing(traced_as)


async def _until_signalled(stop: Callable[[], Awaitable[None]]) -> int:
    """Block until SIGTERM or SIGINT, then run `stop` (the graceful drain)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    from server.observability.tracing import shutdown_tracing

    try:
        await stop()
    finally:
        shutdown_tracing()  # flush the spans of the last requests
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from server.app import create_grpc_service
    from server.netloc import host_port
    from server.settings import Settings

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["grpc_host"] = args.host
    if args.port is not None:
        overrides["grpc_port"] = args.port
    settings = Settings(**overrides)
    _configure_logging(settings.log_level, settings.log_format, traced_as="image-service")
    keep_freed_buffers()
    service = await create_grpc_service(settings)
    await service.start()
    freeze_startup_objects()
    print(
        f"image-service serving gRPC on {host_port(settings.grpc_host, service.port)}", flush=True
    )
    if service.metrics_server is not None:
        print(f"metrics on {service.metrics_server.base_url}/metrics", flush=True)
    return await _until_signalled(service.stop)


async def _sandbox(args: argparse.Namespace) -> int:
    from server.sandbox.server import SandboxServer

    _configure_logging("INFO")
    sandbox = SandboxServer(args.host, args.port)
    await sandbox.start()
    print(f"sandbox emulators on {sandbox.base_url}", flush=True)
    for name, value in sandbox.settings_overrides().items():
        shown = "<sandbox key>" if "key" in name else value
        print(f"  IMAGE_SERVICE_{name.upper()}={shown}", flush=True)
    return await _until_signalled(sandbox.stop)


async def _dev(args: argparse.Namespace) -> int:
    from starlette.applications import Starlette

    from server.app import create_grpc_service
    from server.asgi import AsgiServer
    from server.rest.app import rest_routes
    from server.rest.observing import observe
    from server.sandbox.server import SandboxServer
    from server.settings import Settings
    from server.storage.media_http import media_mount

    base = Settings()
    _configure_logging(base.log_level, base.log_format, traced_as="image-service")
    keep_freed_buffers()
    sandbox = SandboxServer("127.0.0.1", args.sandbox_port)
    await sandbox.start()
    http_app = Starlette(routes=[media_mount(base.local_storage_dir)])
    http = AsgiServer(observe(http_app, metrics=base.metrics), "127.0.0.1", args.http_port)
    await http.start()
    settings = Settings(
        **{
            **sandbox.settings_overrides(),
            "grpc_host": "127.0.0.1",
            "grpc_port": args.grpc_port,
            "local_public_base_url": f"{http.base_url}/media",
            "metrics_host": "127.0.0.1",
            **({} if args.metrics_port is None else {"metrics_port": args.metrics_port}),
        }
    )
    service = await create_grpc_service(settings)
    dev_key = await _dev_key(settings)
    await service.start()
    http_app.router.routes.extend(rest_routes(f"127.0.0.1:{service.port}", settings))
    metrics = ""
    if service.metrics_server is not None:
        metrics = f" metrics={service.metrics_server.base_url}/metrics"
    print(
        f"image-service dev ready: grpc=127.0.0.1:{service.port} "
        f"http={http.base_url} (REST /v1, media /media) emulators={sandbox.base_url}{metrics}",
        flush=True,
    )
    if dev_key:
        print(
            f"dev API key (any call needs it): {dev_key}\n"
            f"  export IMAGE_SERVICE_API_KEY={dev_key} OPENAI_API_KEY={dev_key}",
            flush=True,
        )

    async def stop() -> None:
        await service.stop()
        await http.stop()
        await sandbox.stop()

    return await _until_signalled(stop)


async def _dev_key(settings: Any) -> str:
    """The fixed dev key, put into the dev server's key store; "" with auth off."""
    if settings.auth == "none":
        return ""
    from server.auth.admin import DEV_KEY, ensure_dev_key
    from server.auth.build import open_key_store

    store = open_key_store(settings)
    try:
        await ensure_dev_key(store)
    finally:
        await store.aclose()
    return DEV_KEY
