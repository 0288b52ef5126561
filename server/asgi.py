"""Run a Starlette/ASGI app on uvicorn inside the current event loop.

Used for the local media server, the REST sidecar and the sandbox
emulators, so that one process (and one test) can host several of them on
ephemeral ports. The listening socket is bound before uvicorn starts, so
port 0 works and the real port is known as soon as `start()` returns.
Signal handling stays with the host process (the gRPC drain comes first).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from server.netloc import http_url

# Longer than clients' idle pool timeouts, so the server never closes a
# pooled connection under a client between requests (which would make every
# idle gap cost a retry).
_KEEP_ALIVE_S = 75
_STOP_TIMEOUT_S = 5.0
# uvicorn's main loop period.
_TICK_S = 0.1
# uvicorn's own default. Python's listen() default is 128: a burst of more
# new connections than that overflows the accept queue, and the dropped
# SYNs are retried after 1 s, then 3 s (seen in `make bench` at 128 at once).
_BACKLOG = 2048


def _listen(host: str, port: int, family: socket.AddressFamily) -> socket.socket:
    """`socket.create_server`, but with `proto=IPPROTO_TCP` rather than 0.

    asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and an
    accepted socket inherits its listener's. Without it, Nagle holds back a
    response's second write (uvicorn writes headers and body separately)
    until the client's delayed ACK, 40 ms, on every kept-alive connection.
    """
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" (every address) also takes IPv4, as IPv4-mapped
            # addresses: one socket serves IPv4, IPv6 and dual-stack pods.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class _EmbeddedServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit_requested = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit_requested.set()

    async def main_loop(self) -> None:
        # uvicorn's loop sleeps 0.1 s between ticks and looks at should_exit
        # after each, so every stop waited for the next tick; waking on the
        # request instead makes stop prompt (the tests start and stop a few
        # servers per test). Ticks (the Date header) still come every 0.1 s.
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TICK_S):
                    await self._exit_requested.wait()
            should_exit = await self.on_tick(counter)


class AsgiServer:
    """An ASGI app served by uvicorn on `host:port` (port 0 picks one).

    `graceful_shutdown_s` is how long `stop` lets requests in flight run
    before uvicorn cancels them (which answers a plain-text 500); a process
    with its own drain (the REST sidecar) sets it past that drain's end.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        graceful_shutdown_s: float = 1.0,
    ) -> None:
        self._app = app
        self.host = host
        self.port = port
        self._graceful_shutdown_s = graceful_shutdown_s
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return http_url(self.host, self.port)

    async def start(self) -> None:
        """Bind, start serving and return once requests are accepted."""
        if self._task is not None:
            raise RuntimeError("already started")
        if self.host == "::" and not socket.has_dualstack_ipv6():
            self.host = "0.0.0.0"  # a kernel without IPv6: every IPv4 address
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = _listen(self.host, self.port, family)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            # h11, named rather than uvicorn's "auto", which switches to
            # httptools whenever that is importable. uvicorn's httptools
            # protocol reads a request's header section with no size
            # limit (a 200 MB header line was read into memory); h11
            # refuses more than 16 KiB (BENCHMARKS.md, round 7).
            http="h11",
            lifespan="off",
            ws="none",
            # No log_config/log_level/access_log here: each of those
            # reconfigures uvicorn's loggers for the whole process.
            log_config=None,
            server_header=False,
            timeout_keep_alive=_KEEP_ALIVE_S,
            # uvicorn takes an int here, despite the float it compares with.
            timeout_graceful_shutdown=math.ceil(self._graceful_shutdown_s),
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(self._serve(server, sock))
        while not server.started:
            if self._task.done():
                self._task.result()  # re-raise why it could not start
                raise OSError(f"could not serve on {self.host}:{self.port}")
            await asyncio.sleep(0.01)

    @staticmethod
    async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()

    async def stop(self) -> None:
        """Stop serving; open connections get a moment to finish."""
        if self._task is None or self._server is None:
            return
        self._server.request_exit()
        task, self._task, self._server = self._task, None, None
        try:
            await asyncio.wait_for(
                asyncio.shield(task), self._graceful_shutdown_s + _STOP_TIMEOUT_S
            )
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
