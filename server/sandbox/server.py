"""`SandboxServer`: every emulator on one in-process HTTP server.

    sandbox = SandboxServer("127.0.0.1", 0)
    await sandbox.start()
    sandbox.azure_flux.faults.push(FaultMode.RATE_LIMIT, retry_after=1)
    ... point backends at sandbox.base_url with sandbox.settings_overrides() ...
    await sandbox.stop()

It runs uvicorn as a task on the caller's event loop (no thread, no
subprocess), so tests and `image-service dev` share one loop with it. The
listening socket is bound before uvicorn starts, so port 0 works and the
real port is known as soon as `start()` returns.

Adding an emulator is one line in `__init__` (`self.x = self._add(X())`);
an emulator is any object with a `name`, a `faults` plan, `routes()` and
`settings_overrides(base_url)`. One that serves on a socket of its own (a
gRPC upstream) adds `start_listener(host)` and `stop_listener()`
(`OwnListener`), which `start()` and `stop()` call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server.asgi import AsgiServer
from server.netloc import http_url
from server.sandbox.azure_flux import AzureFluxEmulator
from server.sandbox.azure_mai import AzureMaiEmulator
from server.sandbox.bailian_wan import BailianWanEmulator
from server.sandbox.bedrock_stability import BedrockStabilityEmulator
from server.sandbox.faults import FaultPlan, quiet_uvicorn_filter, sandbox_server_context
from server.sandbox.vertex_imagen import VertexImagenEmulator


class Emulator(Protocol):
    """One upstream's emulator, as the server sees it."""

    name: str
    faults: FaultPlan

    def routes(self) -> Sequence[BaseRoute]: ...

    def settings_overrides(self, base_url: str) -> dict[str, str]:
        """`Settings` field values that point the real backend at this emulator."""
        ...


@runtime_checkable
class OwnListener(Protocol):
    """An emulator that also serves on a socket of its own (a gRPC upstream
    cannot share the HTTP server). The sandbox starts it after the HTTP
    server, on the same host, and stops it first."""

    async def start_listener(self, host: str) -> None: ...

    async def stop_listener(self) -> None: ...


E = TypeVar("E", bound=Emulator)


class _InSandboxContext:
    """Marks the request's context as the sandbox's, so the log filter hides
    uvicorn's routine lines for sandbox requests only (uvicorn's own
    switches for that are process-wide)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sandbox_server_context.set(True)
        await self._app(scope, receive, send)


class SandboxServer:
    """The emulators of every upstream behind one base URL."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._emulators: list[Emulator] = []
        self.azure_flux = self._add(AzureFluxEmulator())
        self.vertex_imagen = self._add(VertexImagenEmulator())
        self.bedrock_stability = self._add(BedrockStabilityEmulator())
        self.azure_mai = self._add(AzureMaiEmulator())
        self.bailian_wan = self._add(BailianWanEmulator())
        self._http: AsgiServer | None = None

    def _add(self, emulator: E) -> E:
        if any(e.name == emulator.name for e in self._emulators):
            raise ValueError(f"duplicate emulator {emulator.name!r}")
        self._emulators.append(emulator)
        return emulator

    @property
    def emulators(self) -> tuple[Emulator, ...]:
        return tuple(self._emulators)

    def emulator(self, name: str) -> Emulator:
        """The emulator called `name` (its backend's registry key)."""
        for emulator in self._emulators:
            if emulator.name == name:
                return emulator
        raise KeyError(name)

    def app(self) -> Starlette:
        """The ASGI app serving every emulator's routes, plus `GET /healthz`."""

        async def healthz(request: Request) -> Response:
            return PlainTextResponse("ok")

        routes: list[BaseRoute] = [Route("/healthz", healthz)]
        for emulator in self._emulators:
            routes.extend(emulator.routes())
        return Starlette(routes=routes)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the sandbox is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return http_url(self.host, self.port)

    def settings_overrides(self) -> dict[str, str]:
        """`Settings` field values pointing every backend at its emulator."""
        overrides: dict[str, str] = {}
        for emulator in self._emulators:
            overrides.update(emulator.settings_overrides(self.base_url))
        return overrides

    def reset(self) -> None:
        """Reset every emulator's fault plan."""
        for emulator in self._emulators:
            emulator.faults.reset()

    async def start(self) -> None:
        """Bind, start serving and return once requests are accepted."""
        if self._http is not None:
            raise RuntimeError("the sandbox is already started")
        for name in ("uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).addFilter(quiet_uvicorn_filter)
        for emulator in self._emulators:
            emulator.faults.open()
        http = AsgiServer(_InSandboxContext(self.app()), self.host, self._requested_port)
        # The server task copies this context, so uvicorn's own log records
        # for the sandbox are recognisable (and hidden) too.
        token = sandbox_server_context.set(True)
        try:
            await http.start()
        finally:
            sandbox_server_context.reset(token)
        self._http = http
        self._port = http.port
        try:
            for emulator in self._emulators:
                if isinstance(emulator, OwnListener):
                    await emulator.start_listener(self.host)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop serving: waiting handlers end at once and connections close."""
        if self._http is None:
            return
        for emulator in self._emulators:
            emulator.faults.close()
        for emulator in self._emulators:
            if isinstance(emulator, OwnListener):
                await emulator.stop_listener()
        http, self._http = self._http, None
        await http.stop()

    async def __aenter__(self) -> SandboxServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
