"""The benchmarks' upstream: the sandbox FLUX emulator in a process of its own.

    python -m benchmarks.emulator [--port 0] [--noise 1mb,3mb,4mb]

Serves `server.sandbox.azure_flux.AzureFluxEmulator`'s route, so the
service's real Azure FLUX backend calls it, and prints one line,
`benchmark emulator on http://127.0.0.1:<port>`, once it accepts requests.
Prompts choose the answer: `[sandbox:noise=3mb]` a cached noise PNG of about
3 MiB, `[sandbox:latency=0.5]` half a second before answering.

Two control routes exist for the harness only:

- `POST /_bench/latencies` with a JSON list of seconds: the next requests'
  latencies, one each, in arrival order (the fault plan's `latencies`), for
  streaming runs whose fan-out calls must each take a different time.
- `GET /_bench/stats`: the fault plan's counters, and what the OTLP route
  below received.
- `POST /v1/traces`: an OTLP/HTTP trace receiver that accepts and counts
  every export (an empty `ExportTraceServiceResponse`, status 200), so
  the production configuration's tracing exports somewhere local without a
  collector, and the receiving costs nothing the service's figures include.

It runs in its own process so that its CPU time is not counted as the
service's, and it runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.asgi import AsgiServer
from server.sandbox.azure_flux import SANDBOX_AZURE_FLUX_KEY, AzureFluxEmulator
from server.sandbox.render import noise_png_of_size, noise_size

API_KEY = SANDBOX_AZURE_FLUX_KEY
READY_PREFIX = "benchmark emulator on "


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: the capacity run
    holds thousands of connections at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def build_app(emulator: AzureFluxEmulator) -> Starlette:
    """The emulator's route plus the harness's control routes."""

    async def latencies(request: Request) -> Response:
        values = await request.json()
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and 0 <= v <= 60 for v in values
        ):
            return JSONResponse({"error": "a list of seconds in [0, 60]"}, 400)
        emulator.faults.latencies = [float(v) for v in values]
        return JSONResponse({"queued": len(values)})

    otlp = {"exports": 0, "bytes": 0}

    async def traces(request: Request) -> Response:
        otlp["exports"] += 1
        otlp["bytes"] += len(await request.body())
        return Response(b"", media_type="application/x-protobuf")

    async def stats(request: Request) -> Response:
        s = emulator.faults.stats
        return JSONResponse(
            {
                "received": s.received,
                "in_flight": s.in_flight,
                "completed": s.completed,
                "cancelled": s.cancelled,
                "otlp_exports": otlp["exports"],
                "otlp_bytes": otlp["bytes"],
            }
        )

    return Starlette(
        routes=[
            *emulator.routes(),
            Route("/_bench/latencies", latencies, methods=["POST"]),
            Route("/_bench/stats", stats, methods=["GET"]),
            Route("/v1/traces", traces, methods=["POST"]),
        ]
    )


async def serve(host: str, port: int, noise: list[int]) -> None:
    """Serve until SIGTERM or SIGINT."""
    emulator = AzureFluxEmulator(API_KEY)
    # Encoded before the first request, so no request waits seconds for it.
    for size in noise:
        await asyncio.to_thread(noise_png_of_size, size)
    server = AsgiServer(build_app(emulator), host, port)
    await server.start()
    print(f"{READY_PREFIX}{server.base_url}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    emulator.faults.close()
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--noise", default="", help="sizes to pre-encode, e.g. 1mb,3mb")
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the benchmark emulator only listens on loopback")
    sizes = [noise_size(s) for s in args.noise.split(",") if s]
    if any(s is None for s in sizes):
        parser.error(f"unreadable --noise {args.noise!r}")
    raise_open_files_limit()
    # uvicorn's access log would cost the emulator CPU on every request.
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.host, args.port, [s for s in sizes if s is not None]))


if __name__ == "__main__":
    main()
