"""A real TCP/HTTP proxy that sits between a storage client and an S3 server.

It forwards each HTTP/1.1 request to the upstream (moto in server mode) and
relays the answer, unless a fault is queued for that request. Faults are
taken in order, one per request, so a test can say exactly what the next N
requests see:

    proxy.push(Fault.error(503, "SlowDown"), times=2)  # two 503 SlowDown
    proxy.push(Fault.drop())                            # then a dropped connection
    proxy.push(Fault.delay(2.0))                        # then a late answer

* `error` answers with an S3-style XML error body; the upstream never sees
  the request. With `Expect: 100-continue` it answers before the body, as
  S3 does.
* `drop` reads the request and closes the connection without a response.
* `delay` forwards the request (the upstream does the work) and holds the
  response back for `seconds`: the slow server whose object lands anyway.

Every request is recorded (method, path, headers, body length, fault), so
tests can check what actually went over the wire, such as checksum headers.
With `tls`, clients reach the proxy over HTTPS (as R2 is reached), and
the proxy still sees each request in the clear.
One request per connection (`Connection: close` both ways) keeps framing
simple; HTTP clients reconnect transparently.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
from collections import deque
from dataclasses import dataclass, field


class FaultKind(enum.Enum):
    ERROR = "error"
    DROP = "drop"
    DELAY = "delay"


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int = 503
    code: str = "SlowDown"
    seconds: float = 0.0

    @classmethod
    def error(cls, status: int = 503, code: str = "SlowDown") -> Fault:
        return cls(FaultKind.ERROR, status=status, code=code)

    @classmethod
    def drop(cls) -> Fault:
        return cls(FaultKind.DROP)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls(FaultKind.DELAY, seconds=seconds)


@dataclass
class SeenRequest:
    method: str
    target: str
    # Header names lower-cased; the last value wins.
    headers: dict[str, str]
    body: bytes = field(repr=False, default=b"")
    fault: Fault | None = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


_REASONS = {500: "Internal Server Error", 503: "Service Unavailable", 403: "Forbidden"}


class S3FaultProxy:
    """See the module docstring. Runs on the event loop that starts it."""

    def __init__(
        self, upstream_host: str, upstream_port: int, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        # Clients may speak HTTPS to the proxy; it always speaks HTTP to moto.
        self._tls = tls
        self._faults: deque[Fault] = deque()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self.requests: list[SeenRequest] = []
        # Requests being answered right now, and the most there ever were.
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = 0
        # Every fault until cleared, after the queue runs out (an outage).
        self.outage: Fault | None = None

    @property
    def endpoint_url(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def push(self, fault: Fault, times: int = 1) -> None:
        """Apply `fault` to the next `times` requests (after those queued)."""
        self._faults.extend([fault] * times)

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, "127.0.0.1", 0, ssl=self._tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        """Stop listening, end held responses and open connections, and wait.

        Idempotent. Held (delayed) responses end with the connection reset,
        so clients blocked on them fail at once instead of at their timeout.
        """
        self._closing.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._connections):
            writer.transport.abort()
        # Handlers end on their own (no cancellation: asyncio's stream
        # callback would log a cancelled handler as an error).
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._connections.add(writer)
        counted = False
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            counted = True
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            await self._serve_one(head, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if counted:
                self.in_flight -= 1
            self._handlers.discard(task)
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_one(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        raw_headers: list[tuple[str, str]] = []
        for line in header_lines:
            if not line:
                continue
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
            raw_headers.append((name.strip(), value.strip()))
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise ConnectionError("chunked request bodies are not supported by this proxy")
        fault = self._faults.popleft() if self._faults else self.outage
        seen = SeenRequest(method, target, headers, fault=fault)
        self.requests.append(seen)
        length = int(headers.get("content-length", "0"))
        expects_continue = headers.get("expect", "").lower() == "100-continue"

        if fault is not None and fault.kind is FaultKind.ERROR:
            # Answer before the body when the client waits for 100 Continue,
            # as S3 does; otherwise drain the body first.
            if not expects_continue:
                seen.body = await reader.readexactly(length)
            writer.write(_error_response(fault))
            await writer.drain()
            return
        if expects_continue and length:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        seen.body = await reader.readexactly(length)
        if fault is not None and fault.kind is FaultKind.DROP:
            writer.transport.abort()
            return

        response = await self._forward(method, target, raw_headers, seen.body)
        if fault is not None and fault.kind is FaultKind.DELAY:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.seconds)
            if self._closing.is_set():
                writer.transport.abort()
                return
        writer.write(response)
        await writer.drain()

    async def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> bytes:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        try:
            lines = [f"{method} {target} HTTP/1.1"]
            lines += [
                f"{name}: {value}"
                for name, value in headers
                if name.lower() not in ("connection", "expect", "keep-alive")
            ]
            lines.append("Connection: close")
            up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await up_writer.drain()
            raw = await up_reader.read()
        finally:
            up_writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await up_writer.wait_closed()
        return _force_close(raw)


def _force_close(raw: bytes) -> bytes:
    """The upstream's response with `Connection: close` (we close after it)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = [
        line
        for line in head.split(b"\r\n")
        if not line.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + sep + body


def _error_response(fault: Fault) -> bytes:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{fault.code}</Code><Message>Injected by the test proxy.</Message>"
        "<RequestId>fault-proxy</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Error')}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
