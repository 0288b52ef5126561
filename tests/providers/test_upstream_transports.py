"""The upstream transports against a raw asyncio HTTP server on a real socket.

`Http1Transport` (the backends' default) and `AiohttpTransport` (what it
hands proxied URLs to) keep one contract, so every test of it runs against
both. The server answers each request by a scripted behaviour, so every
failure the backends must classify (refused, dropped mid-body, stalled,
garbage) is produced by a real peer, and the test checks the httpx exception
the transport turns it into (which `transport_errors` then maps).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import trustme

from server.providers._shared.aiohttp_transport import AiohttpTransport, default_ssl_context
from server.providers._shared.http import new_client
from server.providers._shared.http1 import Http1Transport
from tests.support.raw_http import answer, echo_length, raw_server

Transports = Callable[..., httpx.AsyncBaseTransport]


@pytest.fixture(params=[Http1Transport, AiohttpTransport], ids=["http1", "aiohttp"])
def make_transport(request: pytest.FixtureRequest) -> Transports:
    made: Transports = request.param
    return made


@pytest.fixture
async def client(make_transport: Transports) -> AsyncIterator[httpx.AsyncClient]:
    async with new_client(timeout_s=5, transport=make_transport()) as opened:
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
    # httpx's headers, not the transport's own defaults.
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


async def test_an_upstream_cookie_is_never_sent_back(client: httpx.AsyncClient) -> None:
    async def setting_a_cookie(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(b"ok", "Set-Cookie: affinity=node-7; Path=/"))
        await writer.drain()

    async with raw_server(setting_a_cookie) as server:
        for _ in range(2):
            assert (await client.get(server.url + "/images")).content == b"ok"

    assert len(server.requests) == 2
    assert all(b"cookie" not in head.lower() for head, _ in server.requests)
    assert not client.cookies
    with pytest.raises(TypeError):
        client.cookies = {"affinity": "node-7"}


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


async def test_closing_the_transport_closes_its_connections(make_transport: Transports) -> None:
    transport = make_transport()
    async with raw_server(echo_length) as server:
        async with httpx.AsyncClient(transport=transport) as opened:
            await opened.post(server.url, content=b"abc")
        # A closed client's transport opens a fresh session if used again,
        # rather than failing on a closed one.
        async with httpx.AsyncClient(transport=transport) as reopened:
            assert (await reopened.post(server.url, content=b"ab")).content == b"2"

    assert server.connections == 2


# `new_client`'s own transport: Http1Transport, which hands proxied URLs to aiohttp.
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


async def test_https_upstreams_are_verified_against_the_trusted_cas(
    make_transport: Transports,
) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    async with raw_server(echo_length, tls=server_tls) as server:
        trusting = httpx.AsyncClient(transport=make_transport(ssl_context=client_tls))
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


# -- framing and connection reuse: what a real upstream may send ------------


async def test_a_chunked_answer_with_extensions_and_trailers_is_joined(
    client: httpx.AsyncClient,
) -> None:
    big = bytes(range(256)) * 2048  # 512 KiB, more than one socket read

    async def chunked(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(big), 100_000):
            piece = big[start : start + 100_000]
            writer.write(b"%x;name=value\r\n" % len(piece) + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\nX-Checksum: none\r\n\r\n")
        await writer.drain()

    async with raw_server(chunked) as server:
        first = await client.get(server.url)
        second = await client.get(server.url)

    assert first.content == big and second.content == big
    assert server.connections == 1  # the chunked body ended cleanly: reused


async def test_an_answer_ended_by_closing_the_connection_is_whole(
    client: httpx.AsyncClient,
) -> None:
    async def until_close(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
        writer.write(b"x" * 300_000)
        await writer.drain()
        writer.close()

    async with raw_server(until_close) as server:
        first = await client.get(server.url)
        second = await client.get(server.url)

    assert first.content == b"x" * 300_000 and second.content == first.content
    assert server.connections == 2


async def test_an_interim_answer_is_skipped_for_the_real_one(client: httpx.AsyncClient) -> None:
    async def interim(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"done"))
        await writer.drain()

    async with raw_server(interim) as server:
        response = await client.post(server.url, content=b"abc")

    assert (response.status_code, response.content) == (200, b"done")


async def test_a_connection_the_upstream_says_it_closes_is_not_reused(
    client: httpx.AsyncClient,
) -> None:
    async def closing(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(b"ok", "Connection: close"))
        await writer.drain()
        writer.close()

    async with raw_server(closing) as server:
        for _ in range(3):
            assert (await client.get(server.url)).content == b"ok"

    assert server.connections == 3


async def test_an_idle_connection_to_a_host_not_called_again_is_closed_when_it_expires(
    make_transport: Transports,
) -> None:
    async with (
        new_client(timeout_s=5, transport=make_transport(keepalive_expiry_s=0.2)) as client,
        raw_server(echo_length) as once,
        raw_server(echo_length) as again,
    ):
        assert (await client.post(once.url, content=b"abc")).content == b"3"
        await asyncio.sleep(0.4)
        # Traffic elsewhere; `once` is never called again.
        assert (await client.post(again.url, content=b"ab")).content == b"2"
        for _ in range(250):
            if once.closed:
                break
            await asyncio.sleep(0.02)

        assert once.closed == 1


async def test_an_idle_connection_the_upstream_closed_is_not_handed_out(
    client: httpx.AsyncClient,
) -> None:
    async def answer_then_hang_up(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(b"ok"))  # says nothing about closing, then closes
        await writer.drain()
        writer.close()

    async with raw_server(answer_then_hang_up) as server:
        assert (await client.get(server.url)).content == b"ok"
        await asyncio.sleep(0.1)  # the close reaches the idle connection
        assert (await client.get(server.url)).content == b"ok"

    assert server.connections == 2


async def test_a_body_trickled_in_small_pieces_arrives_whole(client: httpx.AsyncClient) -> None:
    payload = b"0123456789" * 5_000

    async def trickle(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        whole = answer(payload, "Content-Type: text/plain")
        for start in range(0, len(whole), 7_001):  # splits the head too
            writer.write(whole[start : start + 7_001])
            await writer.drain()
            await asyncio.sleep(0)

    async with raw_server(trickle) as server:
        response = await client.get(server.url)

    assert response.content == payload
    assert response.headers["content-type"] == "text/plain"


async def test_concurrent_requests_get_connections_of_their_own(
    client: httpx.AsyncClient,
) -> None:
    async def slow_echo(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        await echo_length(head, body, writer)

    async with raw_server(slow_echo) as server:
        bodies = [b"a" * i for i in range(1, 9)]
        answers = await asyncio.gather(*(client.post(server.url, content=b) for b in bodies))

    assert [a.content for a in answers] == [str(len(b)).encode() for b in bodies]
    assert server.connections == 8


async def test_a_too_long_answer_head_is_a_protocol_error(client: httpx.AsyncClient) -> None:
    async def endless_head(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"y" * 200_000 + b"\r\n\r\n")
        await writer.drain()

    async with raw_server(endless_head) as server:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get(server.url)


async def test_a_header_value_with_a_line_break_is_never_sent() -> None:
    async with raw_server(echo_length) as server, new_client(timeout_s=5) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.get(server.url, headers={"X-Note": "a\r\nX-Injected: 1"})

    assert server.requests == []


async def test_waiting_longer_than_the_pool_timeout_for_a_connection_is_a_pool_timeout() -> None:
    async def slow(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with raw_server(slow) as server, new_client(timeout_s=10, max_connections=1) as client:
        busy = asyncio.create_task(client.get(server.url))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout):
            await client.get(server.url, timeout=httpx.Timeout(10, pool=0.2))
        busy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await busy


async def test_a_chunked_answer_trickled_a_few_bytes_at_a_time_is_joined(
    client: httpx.AsyncClient,
) -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire += b"5\r\nhello\r\n1;x=y\r\n \r\n6\r\nworld!\r\n0\r\n\r\n"

    async def trickle(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        for start in range(0, len(wire), 3):
            writer.write(wire[start : start + 3])
            await writer.drain()
            await asyncio.sleep(0.001)

    async with raw_server(trickle) as server:
        response = await client.get(server.url)

    assert response.content == b"hello world!"


async def test_a_malformed_chunk_is_a_protocol_error(client: httpx.AsyncClient) -> None:
    async def bad_chunk(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n")
        await writer.drain()

    async with raw_server(bad_chunk) as server:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get(server.url, timeout=httpx.Timeout(5, read=1))


async def test_a_smaller_answer_after_a_larger_one_carries_nothing_of_it(
    client: httpx.AsyncClient,
) -> None:
    # Http1Transport keeps large body buffers for reuse: the second, smaller
    # body lands in the first one's buffer and must come back exactly.
    sizes = iter([3 << 20, 2 << 20, (2 << 20) + 1])

    async def sized(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        size = next(sizes)
        writer.write(answer(bytes([size % 251]) * size))
        await writer.drain()

    async with raw_server(sized) as server:
        bodies = [(await client.get(server.url)).content for _ in range(3)]

    assert [len(b) for b in bodies] == [3 << 20, 2 << 20, (2 << 20) + 1]
    assert [set(b) for b in bodies] == [
        {(3 << 20) % 251},
        {(2 << 20) % 251},
        {((2 << 20) + 1) % 251},
    ]
