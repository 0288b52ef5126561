"""An httpx transport that moves bytes with aiohttp.

The backends speak httpx (requests, responses, `MockTransport` in tests);
this transport only changes who reads the socket. Upstream answers are
large: a FLUX or MAI image arrives as a 4 MB JSON body. httpx's own
transport reads it in 64 KiB steps through httpcore, anyio and h11, several
Python layers and a copy each, which cost 5-8 ms of CPU per 4 MB answer in
`make bench`; aiohttp's C parser reads the same body for ~1.3 ms.

Why not the `httpx-aiohttp` package: it yields the body in 16 KiB chunks
(much of the cost again) and maps every `ClientConnectionError`, a dropped
connection mid-body included, to `ConnectTimeout`, which the retry policy
reads as "the request was never sent".

What the transport guarantees:

- the body is read whole, once, and handed to httpx as a single chunk, so
  `Response.aread()` joins nothing; `Content-Encoding` is still decoded by
  httpx (aiohttp's own decompression is off);
- httpx's per-request timeouts are honoured: `connect` bounds waiting for a
  pooled connection plus connecting, `read` bounds each socket read;
- aiohttp's failures come out as the httpx exceptions that
  `server.providers._shared.http.transport_errors` maps: connect failures as
  `ConnectError`/`ConnectTimeout`, a read timeout as `ReadTimeout`, a
  dropped connection or a truncated body as `ReadError`, a malformed
  answer as `RemoteProtocolError`;
- a response abandoned before its body was read (cancellation) closes its
  connection instead of returning it to the pool.
"""

from __future__ import annotations

import contextlib
import functools
import io
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx

_LARGE_BODY_BYTES = 1 << 20

# Most specific first: several aiohttp errors share bases (the timeouts are
# also `ServerConnectionError`s, connect errors also `ClientOSError`s).
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientConnectionError, httpx.ReadError),
    (aiohttp.ClientError, httpx.RemoteProtocolError),
)


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    """Re-raise aiohttp's errors inside the block as their httpx counterparts."""
    try:
        yield
    except aiohttp.ClientError as exc:
        # The last row matches every ClientError.
        httpx_type = next(h for a, h in _ERRORS if isinstance(exc, a))
        # The aiohttp error's text names the host at most, never headers.
        raise httpx_type(f"{type(exc).__name__}: {exc}", request=request) from exc


class _WholeBody(httpx.AsyncByteStream):
    """A response body read in one `ClientResponse.read()`."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            body = await self._response.read()
        self._complete = True
        if body:
            yield body

    async def aclose(self) -> None:
        if self._complete:
            self._response.release()  # the connection goes back to the pool
        else:
            self._response.close()  # unread bytes: the connection cannot be reused


def environment_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for `url` (HTTP(S)_PROXY, ALL_PROXY,
    NO_PROXY), as httpx's own transport honours them; None for none."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    bypass = proxy and urllib.request.proxy_bypass(url.host)
    return None if not proxy or bypass else proxy


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """httpx's default context (certifi's CAs), so verification does not change
    with the transport; made once per process and shared by every client.

    Loading the CA bundle costs tens of milliseconds of CPU, which every
    backend (and every service a test builds) would otherwise pay again; a
    context is safe to share between connections.
    """
    return httpx.create_ssl_context()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` over one `aiohttp.ClientSession`.

    The session is created on the first request, inside the running loop
    (aiohttp binds it there); `aclose` closes it. `max_connections=None`
    means no cap, as for httpx.
    """

    def __init__(
        self,
        *,
        max_connections: int | None = None,
        keepalive_expiry_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_connections = max_connections or 0  # aiohttp: 0 is no limit
        self._keepalive_expiry_s = keepalive_expiry_s
        self._ssl = ssl_context or default_ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_expiry_s,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # httpx sets every header it wants; aiohttp must add none.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                auto_decompress=False,
                # aiohttp's trust_env would read ~/.netrc in a worker thread on
                # every request; proxies come from `_proxy_for` instead.
                trust_env=False,
                # Fewer, larger reads of the multi-megabyte answers.
                read_bufsize=1 << 20,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        pool, connect = timeouts.get("pool"), timeouts.get("connect")
        body = await request.aread()
        # aiohttp warns about raw bytes over 1 MiB; a BytesIO (sharing the
        # bytes' buffer, no copy) is sent in chunks instead.
        data: bytes | io.BytesIO | None = (
            io.BytesIO(body) if len(body) > _LARGE_BODY_BYTES else body or None
        )
        with _httpx_errors(request):
            response = await self._get_session().request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=data,
                allow_redirects=False,
                proxy=self._proxy_for(request.url),
                compress=None,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    # aiohttp's `connect` includes waiting for a pooled connection.
                    connect=None if pool is None or connect is None else pool + connect,
                    sock_connect=connect,
                    sock_read=timeouts.get("read"),
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_WholeBody(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    def _proxy_for(self, url: httpx.URL) -> str | None:
        """`environment_proxy(url)`, read once per host."""
        key = (url.scheme, url.host)
        if key not in self._proxies:
            self._proxies[key] = environment_proxy(url)
        return self._proxies[key]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
