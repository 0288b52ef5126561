"""`image-service rest`: run the OpenAI-compatible REST sidecar.

    image-service rest --upstream 127.0.0.1:50051 --port 8080 [--host ::]

Serves `/v1/images/*`, `/v1/models`, `/v1/generations/{id}`, `/healthz` and
`/readyz` on uvicorn, calling the gRPC service at `--upstream`, until
SIGTERM or SIGINT, then drains (`server.rest.drain`: readiness 503 first,
requests in flight finish within `IMAGE_SERVICE_REST_SHUTDOWN_GRACE_S`).
Unset flags come from `IMAGE_SERVICE_REST_*`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.rest.drain import Drain

log = logging.getLogger(__name__)

# After the grace: time for the requests told to stop to send their 503s.
_ABORT_MARGIN_S = 5.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `rest` command."""
    rest = subparsers.add_parser(
        "rest", help="run the OpenAI-compatible REST sidecar in front of a gRPC service"
    )
    rest.add_argument(
        "--upstream", help="gRPC service as host:port (default: IMAGE_SERVICE_REST_UPSTREAM)"
    )
    rest.add_argument("--port", type=int, help="HTTP port (default: IMAGE_SERVICE_REST_PORT)")
    rest.add_argument("--host", help="bind address (default: IMAGE_SERVICE_REST_HOST)")
    rest.set_defaults(func=run_rest)


async def run_rest(args: argparse.Namespace) -> int:
    """Serve the sidecar until SIGTERM/SIGINT; returns the exit code."""
    from server.allocator import keep_freed_buffers
    from server.asgi import AsgiServer
    from server.observability.logs import configure_logging
    from server.observability.tracing import setup_tracing, shutdown_tracing
    from server.rest import create_app, open_channel
    from server.rest.drain import Drain
    from server.settings import Settings
    from server.startup_heap import freeze_startup_objects

    overrides: dict[str, Any] = {}
    for flag, field in (
        ("upstream", "rest_upstream"),
        ("port", "rest_port"),
        ("host", "rest_host"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field] = value
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    keep_freed_buffers()
    # If OTEL_* asks for it; before the channel. The sidecar's own span carries
    # the trace to the server (server/rest/observing.py): no gRPC client spans.
    setup_tracing("image-service-rest", grpc_client_spans=False)
    channel = open_channel(settings)
    drain = Drain()
    server = AsgiServer(
        create_app(channel, settings, drain=drain),
        settings.rest_host,
        settings.rest_port,
        graceful_shutdown_s=_ABORT_MARGIN_S,
    )
    await server.start()
    freeze_startup_objects()
    print(
        f"image-service REST sidecar on {server.base_url} -> gRPC {settings.rest_upstream}",
        flush=True,
    )
    try:
        await _until_signalled()
        await _drain(drain, settings.rest_shutdown_grace_s)
    finally:
        await server.stop()
        await channel.close(None)
        shutdown_tracing()
    return 0


async def _drain(drain: Drain, grace_s: float) -> None:
    """Readiness 503, then wait for the requests in flight, at most `grace_s`."""
    drain.begin()
    log.info("draining: %d request(s) in flight, grace %.0f s", drain.in_flight, grace_s)
    if not await drain.wait_idle(grace_s):
        log.warning("%d request(s) still in flight after the grace; answering 503", drain.in_flight)
    # Also answers 503 to any request arriving from now on, rather than
    # letting uvicorn cut it off mid-way when it stops.
    drain.expire()
    if not await drain.wait_idle(_ABORT_MARGIN_S):
        # Still unanswered: not waiting on the service (an upload still
        # arriving, say). Answer those 503 too, before uvicorn stops.
        log.warning("cutting %d request(s) still unanswered", drain.cut_unanswered())
        await drain.wait_idle(_ABORT_MARGIN_S)


async def _until_signalled() -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
