"""An httpx transport that reads HTTP/1.1 answers straight into one buffer.

The backends speak httpx; this transport only changes who reads the socket.
Upstream answers are large (a FLUX or MAI image is a 4 MB JSON body) and
the service does little else with them, so reading them is a large part of
its CPU. aiohttp reads each answer in fresh 256 KiB `bytes` from the
socket, its C parser copies every piece again, and `read()` joins the
pieces into a third buffer. This transport is an `asyncio.BufferedProtocol`:
the kernel copies the body straight into one buffer sized from
`Content-Length` (kept for the next large answer), and the only other copy
is the `bytes` httpx hands to the backend. Client CPU per 4.2 MB answer at
c=32 (`python -m benchmarks.transport_read`, BENCHMARKS.md fix 16): 2.1-2.4
ms, against 3.6-4.4 ms over aiohttp and 11 ms over httpx's own transport.

Scope, kept small on purpose: HTTP/1.1 (and 1.0 answers), plain TCP or TLS,
one request per connection at a time, bodies framed by `Content-Length`,
`chunked` or the connection's end. A URL the environment routes through a
proxy (HTTP(S)_PROXY, ALL_PROXY, minus NO_PROXY, as httpx's own transport
reads them) goes to `AiohttpTransport` instead, which speaks proxies.

What the transport guarantees, as `AiohttpTransport` does (the same tests
run against both, `tests/providers/test_upstream_transports.py`):

- the body is read whole, once, and handed to httpx as a single chunk, so
  `Response.aread()` joins nothing; `Content-Encoding` is decoded by httpx;
- httpx's per-request timeouts: `pool` bounds waiting for a connection slot
  (`max_connections`), `connect` bounds connecting (and the TLS handshake),
  `read` bounds each wait for bytes from the upstream;
- failures are the httpx exceptions `http.transport_errors` maps: connect
  failures `ConnectError`/`ConnectTimeout`, a read timeout `ReadTimeout`, a
  dropped connection or a truncated body `ReadError`, an answer that is not
  HTTP/1.x `RemoteProtocolError`;
- a response abandoned before its body was read (cancellation) closes its
  connection instead of returning it to the pool; idle connections close
  after `keepalive_expiry_s`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx

from server.providers._shared.aiohttp_transport import (
    AiohttpTransport,
    default_ssl_context,
    environment_proxy,
)

# The status line and headers must fit in this much; image APIs send a few
# hundred bytes. Reads before the head is complete land in a buffer this big.
_MAX_HEAD_BYTES = 64 * 1024
_HEAD_READ_BYTES = 16 * 1024
# Bodies of unknown length (chunked, or until the connection ends) are read
# in pieces this big before being appended to the body.
_PIECE_BYTES = 256 * 1024
# No image answer comes near this; a Content-Length beyond it is refused
# rather than allocated.
_MAX_BODY_BYTES = 512 * 1024 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
# Body buffers of a Content-Length from 1 MiB to 32 MiB are reused (8 kept).
_MIN_KEPT_BYTES = 1024 * 1024
_MAX_KEPT_BYTES = 32 * 1024 * 1024
_KEPT_BUFFERS = 8
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _ChunkedDecoder:
    """`Transfer-Encoding: chunked` decoded incrementally into one bytearray."""

    def __init__(self) -> None:
        self.body = bytearray()
        self._pending = bytearray()
        self._remaining = 0  # data bytes left in the current chunk
        self._crlf = False  # the current chunk's data is read; its CRLF is due
        self._trailers = False

    def feed(self, data: memoryview) -> bool:
        """Take received bytes; True once the whole body (and trailers) arrived."""
        self._pending += data
        pending = self._pending
        position = 0
        done = False
        while not done:
            if self._remaining:
                take = min(self._remaining, len(pending) - position)
                self.body += pending[position : position + take]
                position += take
                self._remaining -= take
                if self._remaining:
                    break
                self._crlf = True
            if self._crlf:
                if len(pending) - position < 2:
                    break
                if pending[position : position + 2] != b"\r\n":
                    raise httpx.RemoteProtocolError("A chunk did not end with CRLF.")
                position += 2
                self._crlf = False
            end = pending.find(b"\r\n", position)
            if end < 0:
                if len(pending) - position > _MAX_HEAD_BYTES:
                    raise httpx.RemoteProtocolError("A chunk header was too long.")
                break
            done = self._line(bytes(pending[position:end]))
            position = end + 2
        del pending[:position]
        return done

    def _line(self, line: bytes) -> bool:
        """A chunk-size line or a trailer line; True at the end of the trailers."""
        if self._trailers:
            return not line  # the empty line after the trailers ends the body
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise httpx.RemoteProtocolError("A chunk size was not hexadecimal.") from None
        if size < 0:
            raise httpx.RemoteProtocolError("A chunk size was negative.")
        if size == 0:
            self._trailers = True
        else:
            self._remaining = size
        return False


class _Response:
    """One answer's head, as parsed from the status line and header lines."""

    __slots__ = ("chunked", "headers", "keep_alive", "length", "reason", "status")

    def __init__(self, head: bytes, method: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        status, _, self.reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(status) != 3 or not status.isdigit():
            raise httpx.RemoteProtocolError("The upstream's answer is not HTTP/1.x.")
        self.status = int(status)
        self.chunked = False
        self.keep_alive = version == b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        lengths = self._read_headers(lines[1:])
        self.length: int | None = None
        if method == b"HEAD" or self.status in _NO_BODY_STATUSES or self.status < 200:
            self.length = 0
            self.chunked = False
        elif self.chunked:
            pass  # chunked wins over any Content-Length (RFC 9112 6.3)
        elif lengths:
            if len(lengths) != 1 or not (text := lengths.pop()).isdigit():
                raise httpx.RemoteProtocolError("The upstream sent an unreadable Content-Length.")
            self.length = int(text)
        else:
            self.keep_alive = False  # the body ends when the connection does

    def _read_headers(self, lines: list[bytes]) -> set[bytes]:
        """Fill `headers`, `chunked` and `keep_alive`; the Content-Length values seen."""
        lengths: set[bytes] = set()
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or line[:1] in b" \t":
                raise httpx.RemoteProtocolError("The upstream sent a malformed header line.")
            value = value.strip(b" \t")
            self.headers.append((name, value))
            lowered = name.lower()
            if lowered == b"content-length":
                lengths.add(value)
            elif lowered == b"transfer-encoding":
                self.chunked = value.lower().endswith(b"chunked")
            elif lowered == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    self.keep_alive = False
                elif b"keep-alive" in tokens:
                    self.keep_alive = True
        return lengths


class _BodyBuffers:
    """Large body buffers kept for the next answers of the same transport.

    A fresh multi-megabyte `bytearray` is zeroed byte by byte before the
    socket fills it; a kept one is not. At most `_KEPT_BUFFERS` are kept,
    each at most `_MAX_KEPT_BYTES`; smaller bodies use fresh buffers.
    """

    def __init__(self) -> None:
        self._free: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        if size >= _MIN_KEPT_BYTES:
            fitting = [b for b in self._free if len(b) >= size]
            if fitting:
                chosen = min(fitting, key=len)
                self._free.remove(chosen)
                return chosen
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        if _MIN_KEPT_BYTES <= len(buffer) <= _MAX_KEPT_BYTES:
            if len(self._free) >= _KEPT_BUFFERS:
                self._free.remove(min(self._free, key=len))  # keep the larger ones
            self._free.append(buffer)


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection, serving one request at a time."""

    def __init__(self, key: tuple[str, str, int], buffers: _BodyBuffers) -> None:
        self.key = key
        self._buffers = buffers
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        self._method = b""
        self._head = bytearray(_HEAD_READ_BYTES)
        self._filled = 0
        self._searched = 0
        self._response: _Response | None = None
        self._body: bytearray | None = None
        self._body_view: memoryview | None = None
        self._chunked: _ChunkedDecoder | None = None
        self._piece: bytearray | None = None
        self._head_ready: asyncio.Future[_Response] | None = None
        self._body_ready: asyncio.Future[memoryview] | None = None
        self._read_timeout: float | None = None
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._active = False
        self._reusable = False

    # -- asyncio protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body_view is not None:
            return self._body_view[self._filled :]
        if self._response is not None:  # chunked or until close: a piece at a time
            if self._piece is None:
                self._piece = bytearray(_PIECE_BYTES)
            return memoryview(self._piece)
        if self._filled == len(self._head):
            self._head.extend(bytes(len(self._head)))  # a long head: more room, up to the cap
        return memoryview(self._head)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if not self._active:
            # Bytes on an idle connection: nothing was asked, so it cannot be reused.
            self._closed = True
            if self.transport is not None:
                self.transport.abort()
            return
        self._last_read = self._loop.time()
        try:
            if self._body_view is not None:
                self._filled += nbytes
                if self._filled >= len(self._body_view):
                    self._finish()
            elif self._response is not None:
                assert self._piece is not None
                self._more_body(memoryview(self._piece)[:nbytes])
            else:
                self._filled += nbytes
                self._parse_head()
        except httpx.TransportError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._active:
            return
        response = self._response
        if response is not None and response.length is None and not response.chunked:
            self._finish()  # the body was framed by the connection's end
            return
        if response is None:
            text = "The upstream closed the connection without answering."
        else:
            text = "The upstream closed the connection before the whole body arrived."
        self._fail(httpx.ReadError(text))

    # -- a request's life --------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self._closed and self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes, body: bytes, method: bytes, read_timeout: float | None) -> None:
        """Write one request and start waiting for its answer."""
        # State is fresh: set by __init__ or by `release` after the last answer.
        assert self.transport is not None and not self._active
        self._active = True
        self._method = method
        self._head_ready = self._loop.create_future()
        self._body_ready = self._loop.create_future()
        # The head future may never be awaited if the body fails first; the
        # caller always awaits the body's, or abandons the connection.
        self._head_ready.add_done_callback(_consume)
        self._body_ready.add_done_callback(_consume)
        self._read_timeout = read_timeout
        self._last_read = self._loop.time()
        if read_timeout is not None:
            self._timer = self._loop.call_at(self._last_read + read_timeout, self._check_timeout)
        # Two writes, not one joined buffer: the body is often megabytes, and
        # a write the socket takes at once is not copied.
        self.transport.write(data)
        if body:
            self.transport.write(body)

    async def head(self) -> _Response:
        assert self._head_ready is not None
        return await self._head_ready

    async def body(self) -> memoryview:
        """The whole body, a view of a buffer `recycle` takes back."""
        assert self._body_ready is not None
        return await self._body_ready

    def recycle(self) -> None:
        """The body has been copied out: its buffer may serve another answer."""
        if self._body is not None and self._response is not None and self._response.length:
            self._buffers.give(self._body)
        self._body = None

    def release(self) -> bool:
        """After a complete answer: True if the connection can serve another."""
        reusable = self._reusable and self.usable
        self._active = False
        self.idle_since = time.monotonic()
        self._reset()
        if not reusable:
            self.close()
        return reusable

    def close(self) -> None:
        self._closed = True
        self._active = False
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    # -- internals ---------------------------------------------------------

    def _parse_head(self) -> None:
        end = self._head.find(b"\r\n\r\n", max(0, self._searched - 3), self._filled)
        if end < 0:
            self._searched = self._filled
            if self._filled >= _MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("The upstream's answer head was too long.")
            return
        response = _Response(bytes(self._head[:end]), self._method)
        rest = memoryview(self._head)[end + 4 : self._filled]
        if response.status < 200:
            # An interim answer (100 Continue and the like): the real one follows.
            leftover = bytes(rest)
            self._head = bytearray(_HEAD_READ_BYTES)
            self._head[: len(leftover)] = leftover
            self._filled = len(leftover)
            self._searched = 0
            if leftover:
                self._parse_head()
            return
        self._response = response
        assert self._head_ready is not None
        if not self._head_ready.done():
            self._head_ready.set_result(response)
        if response.length is not None:
            if response.length > _MAX_BODY_BYTES:
                raise httpx.RemoteProtocolError("The upstream announced too large a body.")
            if len(rest) > response.length:
                response.keep_alive = False  # bytes past the body: never reuse
                rest = rest[: response.length]
            self._body = self._buffers.take(response.length)
            self._body_view = memoryview(self._body)[: response.length]
            self._body_view[: len(rest)] = rest
            self._filled = len(rest)
            if self._filled >= response.length:
                self._finish()
            return
        if response.chunked:
            self._chunked = _ChunkedDecoder()
        else:
            self._body = bytearray()
        self._more_body(rest)

    def _more_body(self, data: memoryview) -> None:
        done = False
        if self._chunked is not None:
            done = self._chunked.feed(data)
            received = self._chunked.body
        else:
            assert self._body is not None
            self._body += data
            received = self._body
        if len(received) > _MAX_BODY_BYTES:
            raise httpx.RemoteProtocolError("The upstream sent too large a body.")
        if done:
            self._body = received
            self._finish()

    def _finish(self) -> None:
        self._cancel_timer()
        response = self._response
        assert response is not None and self._body is not None
        self._reusable = response.keep_alive and (response.length is not None or response.chunked)
        self._body_view = None
        assert self._body_ready is not None
        if not self._body_ready.done():
            length = response.length if response.length is not None else len(self._body)
            self._body_ready.set_result(memoryview(self._body)[:length])

    def _fail(self, exc: httpx.TransportError) -> None:
        self._cancel_timer()
        for future in (self._head_ready, self._body_ready):
            if future is not None and not future.done():
                future.set_exception(exc)
        self._active = False
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    def _check_timeout(self) -> None:
        self._timer = None
        assert self._read_timeout is not None
        due = self._last_read + self._read_timeout
        if self._loop.time() >= due:
            self._fail(httpx.ReadTimeout("The upstream sent nothing for the read timeout."))
        else:
            self._timer = self._loop.call_at(due, self._check_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _consume(future: asyncio.Future[Any]) -> None:
    # Mark an exception as retrieved so an abandoned future does not log it.
    if not future.cancelled():
        future.exception()


class _WholeBody(httpx.AsyncByteStream):
    """The answer's body, read whole into one buffer and handed over once."""

    def __init__(self, connection: _Connection, transport: Http1Transport) -> None:
        self._connection = connection
        self._transport = transport
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body = await self._connection.body()
        # httpx joins what a stream yields into `Response.content`; one
        # `bytes` chunk is used as it is, so this is the only copy.
        data = bytes(body)
        body.release()
        self._connection.recycle()
        self._complete = True
        if data:
            yield data

    async def aclose(self) -> None:
        if self._complete:
            self._transport._release(self._connection)
        else:
            self._transport._abandon(self._connection)  # unread bytes: never reused


class Http1Transport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` keeping its own pool of HTTP/1.1 connections.

    `max_connections=None` means no cap, as for httpx. Proxied URLs go
    through an `AiohttpTransport` made on first need (see the module doc).
    """

    def __init__(
        self,
        *,
        max_connections: int | None = None,
        keepalive_expiry_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._keepalive_expiry_s = keepalive_expiry_s
        self._ssl = ssl_context or default_ssl_context()
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self._max_connections = max_connections
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._next_sweep = time.monotonic() + keepalive_expiry_s
        self._buffers = _BodyBuffers()
        self._open: set[_Connection] = set()
        self._proxied: AiohttpTransport | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"Unsupported URL scheme {url.scheme!r}.")
        if self._proxy_for(url) is not None:
            return await self._through_proxy(request)
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        method = request.method.encode("ascii")
        data = _request_head(request, method, len(body))
        await self._take_slot(timeouts.get("pool"))
        connection: _Connection | None = None
        try:
            connection = await self._connection_for(url, timeouts.get("connect"))
            connection.send(data, body, method, timeouts.get("read"))
            response = await connection.head()
        except BaseException:
            if connection is not None:
                self._abandon(connection)
            else:
                self._give_slot()
            raise
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_WholeBody(connection, self),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason},
        )

    async def _connection_for(self, url: httpx.URL, connect_timeout: float | None) -> _Connection:
        host = url.host
        port = url.port or _DEFAULT_PORTS[url.scheme]
        key = (url.scheme, host, port)
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.usable and now - connection.idle_since < self._keepalive_expiry_s:
                return connection
            connection.close()
            self._open.discard(connection)
        connection = _Connection(key, self._buffers)
        loop = asyncio.get_running_loop()
        tls = url.scheme == "https"
        try:
            async with asyncio.timeout(connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: connection,
                    host,
                    port,
                    ssl=self._ssl if tls else None,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            connection.close()
            raise httpx.ConnectTimeout(f"Could not connect to {host}:{port} in time.") from None
        except (OSError, ssl.SSLError) as exc:
            connection.close()
            # The error's text names the address at most, never headers.
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        # uvloop calls connection_made soon after create_connection returns,
        # the default loop before: either way the connection is usable now.
        connection.transport = transport
        self._open.add(connection)
        return connection

    def _release(self, connection: _Connection) -> None:
        if connection.release():
            self._idle.setdefault(connection.key, []).append(connection)
        else:
            self._open.discard(connection)
        self._give_slot()
        self._sweep_idle()

    def _sweep_idle(self) -> None:
        """Close every host's idle connections that expired or that the far
        side closed, at most once per expiry period.

        `_connection_for` drops such connections for the host it is asked
        for; without this, a host called once (a result download's bucket,
        say) would keep its idle sockets and their objects for good.
        """
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._keepalive_expiry_s
        for key, idle in list(self._idle.items()):
            fresh: list[_Connection] = []
            for connection in idle:
                if connection.usable and now - connection.idle_since < self._keepalive_expiry_s:
                    fresh.append(connection)
                else:
                    connection.close()
                    self._open.discard(connection)
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]

    def _abandon(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)
        self._give_slot()

    async def _take_slot(self, pool_timeout: float | None) -> None:
        if self._slots is None:
            return
        try:
            async with asyncio.timeout(pool_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout(
                f"All {self._max_connections} upstream connections stayed busy."
            ) from None

    def _give_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def _proxy_for(self, url: httpx.URL) -> str | None:
        key = (url.scheme, url.host)
        if key not in self._proxies:
            self._proxies[key] = environment_proxy(url)
        return self._proxies[key]

    async def _through_proxy(self, request: httpx.Request) -> httpx.Response:
        if self._proxied is None:
            self._proxied = AiohttpTransport(
                max_connections=self._max_connections,
                keepalive_expiry_s=self._keepalive_expiry_s,
                ssl_context=self._ssl,
            )
        return await self._proxied.handle_async_request(request)

    async def aclose(self) -> None:
        for connection in self._open:
            connection.close()
        self._open.clear()
        self._idle.clear()
        if self._proxied is not None:
            await self._proxied.aclose()


def _request_head(request: httpx.Request, method: bytes, body_length: int) -> bytes:
    """The request line and headers, with the body framed by its length.

    Raises `httpx.LocalProtocolError` for a CR or LF inside the target, a
    header name or a value: it would let the value write headers of its own.
    """
    target = request.url.raw_path or b"/"
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    has_host = False
    broken = _has_line_break(method) or _has_line_break(target)
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered in (b"content-length", b"transfer-encoding"):
            continue  # the body is read whole: framed by its length below
        has_host = has_host or lowered == b"host"
        broken = broken or _has_line_break(name) or _has_line_break(value)
        lines += (name, b": ", value, b"\r\n")
    if broken:
        raise httpx.LocalProtocolError("A request line or header contained a line break.")
    if not has_host:
        lines += (b"Host: ", request.url.netloc, b"\r\n")
    if body_length or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        lines.append(b"Content-Length: %d\r\n" % body_length)
    lines.append(b"\r\n")
    return b"".join(lines)


def _has_line_break(text: bytes) -> bool:
    return b"\r" in text or b"\n" in text
