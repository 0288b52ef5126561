"""`AiohttpTransport` against a raw asyncio HTTP server on a real socket.

The server answers each request by a scripted behaviour, so every failure
the backends must classify (refused, dropped mid-body, stalled, garbage) is
produced by a real peer, and the test checks the httpx exception the
transport turns it into (which `transport_errors` then maps).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import trustme

from server.providers._shared.aiohttp_transport import AiohttpTransport, default_ssl_context
from server.providers._shared.http import new_client

Handler = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    """An HTTP/1.1 server whose answers are written byte by byte by `handler`."""

    handler: Handler
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    url: str = ""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            self.requests.append((head, body))
            await self.handler(head, body, writer)
            if writer.is_closing():
                return


@contextlib.asynccontextmanager
async def raw_server(
    handler: Handler, tls: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    state = RawServer(handler)
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    state.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    async with server:
        try:
            yield state
        finally:
            # Handlers still stalling: end them, closing their sockets.
            for task in state.tasks:
                task.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)


def answer(body: bytes, *headers: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo_length(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(answer(str(len(body)).encode()))
    await writer.drain()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_client(timeout_s=5) as opened:
        yield opened


async def test_the_whole_body_comes_back_and_the_request_goes_out_intact(
    client: httpx.AsyncClient,
) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: sent through aiohttp's chunked BytesIO path

    async with raw_server(echo_length) as server:
        response = await client.post(
            server.url + "/upload?x=1", content=big, headers={"X-Trace": "abc"}
        )

    assert response.status_code == 200
    assert response.content == str(len(big)).encode()
    head, body = server.requests[0]
    assert body == big
    assert head.startswith(b"POST /upload?x=1 HTTP/1.1\r\n")
    assert b"\r\nX-Trace: abc" in head or b"\r\nx-trace: abc" in head
    # httpx's headers, not aiohttp's defaults.
    assert b"chuizi-image-service/" in head
    assert b"Python/" not in head


async def test_a_compressed_answer_is_decoded_by_httpx(client: httpx.AsyncClient) -> None:
    text = b'{"data": "' + b"x" * 100_000 + b'"}'

    async def gzipped(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(gzip.compress(text), "Content-Encoding: gzip"))
        await writer.drain()

    async with raw_server(gzipped) as server:
        response = await client.get(server.url)

    assert response.content == text


async def test_connections_are_reused_after_a_fully_read_answer(
    client: httpx.AsyncClient,
) -> None:
    async with raw_server(echo_length) as server:
        for _ in range(3):
            assert (await client.post(server.url, content=b"abc")).content == b"3"

    assert server.connections == 1


async def test_an_abandoned_answer_closes_its_connection(client: httpx.AsyncClient) -> None:
    async def trickle(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        if body == b"slow":
            # Headers and part of the body, then nothing: the reader gives up.
            writer.write(answer(b"x" * 1000)[:-900])
            await writer.drain()
            await asyncio.sleep(10)
        else:
            await echo_length(head, body, writer)

    async with raw_server(trickle) as server:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.post(server.url, content=b"slow")
        # The half-read connection must not be handed out again.
        assert (await client.post(server.url, content=b"fast")).content == b"4"

    assert server.connections == 2


async def test_a_refused_connection_is_a_connect_error(client: httpx.AsyncClient) -> None:
    async with raw_server(echo_length) as server:
        url = server.url
    # The server is closed: nothing listens on the port any more.
    with pytest.raises(httpx.ConnectError):
        await client.get(url)


async def test_a_connection_dropped_mid_body_is_a_read_error(client: httpx.AsyncClient) -> None:
    async def drop(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(b"x" * 1000)[:-990])
        await writer.drain()
        writer.close()

    async with raw_server(drop) as server:
        with pytest.raises(httpx.ReadError):
            await client.get(server.url)


async def test_a_dropped_connection_before_any_answer_is_a_read_error(
    client: httpx.AsyncClient,
) -> None:
    async def hang_up(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with raw_server(hang_up) as server:
        with pytest.raises(httpx.ReadError):
            await client.post(server.url, content=b"abc")


async def test_a_stalled_answer_is_a_read_timeout(client: httpx.AsyncClient) -> None:
    async def stall(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async with raw_server(stall) as server:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url, timeout=httpx.Timeout(5, read=0.2))


async def test_a_garbled_answer_is_a_protocol_error(client: httpx.AsyncClient) -> None:
    async def garble(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()

    async with raw_server(garble) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.url)


async def test_closing_the_transport_closes_its_connections() -> None:
    transport = AiohttpTransport()
    async with raw_server(echo_length) as server:
        async with httpx.AsyncClient(transport=transport) as opened:
            await opened.post(server.url, content=b"abc")
        # A closed client's transport opens a fresh session if used again,
        # rather than failing on a closed one.
        async with httpx.AsyncClient(transport=transport) as reopened:
            assert (await reopened.post(server.url, content=b"ab")).content == b"2"

    assert server.connections == 2


async def test_the_environment_proxy_is_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def proxy(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(head.split(b" ")[1]))  # the request target it was asked for
        await writer.drain()

    async with raw_server(proxy) as server:
        monkeypatch.setenv("HTTP_PROXY", server.url)
        monkeypatch.setenv("NO_PROXY", "bypassed.invalid")
        async with new_client(timeout_s=5) as opened:
            response = await opened.get("http://upstream.invalid/v1/x?a=1")
            with pytest.raises(httpx.ConnectError):
                await opened.get("http://bypassed.invalid/")

    # Absolute-form target: the proxy was asked to fetch the upstream URL.
    assert response.content == b"http://upstream.invalid/v1/x?a=1"


async def test_https_upstreams_are_verified_against_the_trusted_cas() -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    async with raw_server(echo_length, tls=server_tls) as server:
        trusting = httpx.AsyncClient(transport=AiohttpTransport(ssl_context=client_tls))
        async with trusting:
            assert (await trusting.post(server.url, content=b"abcd")).content == b"4"
        # The production default (certifi's CAs, as httpx's) refuses a
        # certificate from an unknown CA: no request goes out unverified.
        async with new_client(timeout_s=5) as default:
            with pytest.raises(httpx.ConnectError):
                await default.get(server.url)


def test_the_default_tls_context_is_made_once_and_verifies() -> None:
    # Shared by every client (loading the CA bundle costs tens of ms each time),
    # and still the verifying default that the test above relies on.
    context = default_ssl_context()
    assert context is default_ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
