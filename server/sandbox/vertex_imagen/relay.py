"""The TCP relay in front of the emulator's gRPC server, so a call's connection can be cut."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


class Relay:
    """A TCP relay in front of the gRPC server.

    gRPC gives a handler no way to close its client's connection, yet
    DROP_CONNECTION must look like a network failure; the relay can cut the
    connection a call arrived on (found by the peer address the gRPC server
    sees, which is the relay's own outgoing socket).
    """

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._target_port = 0
        self._links: dict[int, tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int, target_port: int) -> int:
        self._target_port = target_port
        self._server = await asyncio.start_server(self._relay, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            inner_reader, inner_writer = await asyncio.open_connection(
                "127.0.0.1", self._target_port
            )
        except OSError:
            writer.transport.abort()
            return
        key = int(inner_writer.get_extra_info("sockname")[1])
        self._links[key] = (writer, inner_writer)
        try:
            await asyncio.gather(_pump(reader, inner_writer), _pump(inner_reader, writer))
        finally:
            self._links.pop(key, None)
            writer.transport.abort()
            inner_writer.transport.abort()

    def drop(self, peer: str) -> bool:
        """Cut the client connection behind gRPC peer `peer` ("ipv4:127.0.0.1:PORT")."""
        _, _, port = peer.rpartition(":")
        link = self._links.pop(int(port), None) if port.isdigit() else None
        if link is None:
            return False
        for writer in link:
            writer.transport.abort()
        return True

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for key in list(self._links):
            for writer in self._links.pop(key):
                writer.transport.abort()
        await server.wait_closed()
        # Cut off, the relays end within a few loop turns; none may outlive
        # the sandbox (cancelling one would make asyncio log an error).
        if self._tasks:
            _, stuck = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in stuck:
                task.cancel()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
