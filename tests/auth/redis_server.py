"""A real redis-server for tests: its own port, its own temp dir, no persistence."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    url: str
    # Started with `subprocess`, not asyncio's subprocess API: under uvloop
    # that can crash the child of this multi-threaded process (see
    # `spawns_processes` in tests/conftest.py), and the auth tests that use
    # a redis-server run on uvloop too.
    process: subprocess.Popen[bytes]

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait)


@contextlib.asynccontextmanager
async def redis_server(directory: pathlib.Path) -> AsyncIterator[RedisServer]:
    """Start redis-server (installed by `make test-deps`) and wait until it answers PING."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: run `make test-deps`"
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    port = free_port()
    process = await asyncio.to_thread(
        subprocess.Popen,
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(f"redis://127.0.0.1:{port}/0", process)
    try:
        client = aioredis.Redis.from_url(server.url)
        try:
            for _ in range(200):
                with contextlib.suppress(OSError, aioredis.ConnectionError):
                    if await client.ping():
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("redis-server did not start")
        finally:
            await client.aclose()
        yield server
    finally:
        await server.stop()
