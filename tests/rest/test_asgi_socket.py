"""`AsgiServer`'s listening socket: TCP_NODELAY on every connection, a deep
backlog; and its HTTP protocol's bound on a request's header section."""

from __future__ import annotations

import asyncio
import socket

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from server.asgi import AsgiServer, _listen
from server.settings import Settings


def test_accepted_sockets_say_tcp_so_asyncio_disables_nagle() -> None:
    listener = _listen("127.0.0.1", 0, socket.AF_INET)
    with listener, socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            # asyncio sets TCP_NODELAY only when proto is IPPROTO_TCP.
            assert accepted.proto == socket.IPPROTO_TCP
            assert client.getsockname() == accepted.getpeername()


async def test_small_answers_on_a_kept_alive_connection_are_not_held_back() -> None:
    """Nagle plus the client's delayed ACK held every second write 40 ms."""

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    server = AsgiServer(Starlette(routes=[Route("/", hello)]))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        request = f"GET / HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode()
        loop = asyncio.get_running_loop()
        timings = []
        for _ in range(5):
            started = loop.time()
            writer.write(request)
            await reader.readuntil(b"\r\n\r\nhello")
            timings.append(loop.time() - started)
        writer.close()
        await writer.wait_closed()
    finally:
        await server.stop()
    # Every answer after the first would take >= 40 ms with Nagle on.
    assert sorted(timings)[2] < 0.035, timings


async def test_the_default_bind_address_serves_ipv4_and_ipv6() -> None:
    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    default_host = Settings.model_fields["rest_host"].default
    server = AsgiServer(Starlette(routes=[Route("/", hello)]), default_host)
    await server.start()
    try:
        answers = []
        for host in ("127.0.0.1", "::1"):
            reader, writer = await asyncio.open_connection(host, server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answers.append((await reader.read()).rsplit(b"\r\n", 1)[-1])
            writer.close()
            await writer.wait_closed()
    finally:
        await server.stop()
    assert answers == [b"hello", b"hello"]


async def test_an_endless_header_section_is_refused_not_read_into_memory() -> None:
    """A client that never ends its headers is cut off after a few KiB,
    whatever HTTP parser uvicorn could pick up from the environment."""

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    server = AsgiServer(Starlette(routes=[Route("/", hello)]))
    await server.start()
    sent = 0
    answer = b""
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(f"GET / HTTP/1.1\r\nHost: {server.host}\r\nX-Endless: ".encode())
        chunk = b"a" * (64 * 1024)
        try:
            async with asyncio.timeout(10):
                # Up to 64 MiB; the server closes long before.
                while sent < 1024 and not reader.at_eof():
                    writer.write(chunk)
                    await writer.drain()
                    sent += 1
                answer = await reader.read(100)
        except (ConnectionError, TimeoutError):
            pass
        writer.close()
    finally:
        await server.stop()
    # Refused: an error status or a reset, after a few chunks at most (the
    # socket buffers hold some before the server's refusal is seen).
    assert sent < 1024
    assert answer == b"" or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer
