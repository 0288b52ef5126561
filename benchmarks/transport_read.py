"""CPU per upstream answer of the backends' HTTP client, transport by transport.

    python -m benchmarks.transport_read [--body-bytes 4200000] [-c 32] [--requests 50]
        [--transport http1|aiohttp|httpx] [--tuned-allocator]

Measures what reading one upstream answer costs the service's side alone:
a child process serves a fixed `{"data":[{"b64_json":"AAAA..."}]}` answer of
`--body-bytes` over HTTP/1.1 keep-alive on 127.0.0.1, and this process
sends `c` concurrent closed loops of POSTs through
`server.providers._shared.http.new_client` (httpx) over the chosen
transport, reading each whole answer as a backend does (`response.content`).
Its own CPU time (`getrusage`, user + system) divided by the requests is
the figure; the server's CPU is in the child and not counted.

- `http1`: `Http1Transport`, the backends' default;
- `aiohttp`: `AiohttpTransport`, what proxied URLs use (the default before
  fix 16 in BENCHMARKS.md);
- `httpx`: httpx's own transport (httpcore and h11).

`--tuned-allocator` applies `server.allocator.keep_freed_buffers` first, as
`image-service serve` does.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import time

import httpx

from benchmarks.processes import forked_server
from server.allocator import keep_freed_buffers
from server.providers._shared.aiohttp_transport import AiohttpTransport
from server.providers._shared.http import new_client
from server.providers._shared.http1 import Http1Transport

_TRANSPORTS = {
    "http1": Http1Transport,
    "aiohttp": AiohttpTransport,
    "httpx": httpx.AsyncHTTPTransport,
}


class _FixedAnswer(asyncio.Protocol):
    """Answers every request on the connection with the same bytes."""

    answer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._pending = b""

    def data_received(self, data: bytes) -> None:
        self._pending += data
        while (end := self._pending.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self._pending[:end].split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self._pending) < end + 4 + length:
                return
            self._pending = self._pending[end + 4 + length :]
            self._transport.write(self.answer)


def _answer_body(base64_bytes: int) -> bytes:
    return b'{"data":[{"b64_json":"' + b"A" * base64_bytes + b'"}]}'


def _serve_forever(body: bytes, port_pipe: int) -> None:
    _FixedAnswer.answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(_FixedAnswer, "127.0.0.1", 0)
        os.write(port_pipe, str(server.sockets[0].getsockname()[1]).encode())
        await asyncio.Event().wait()

    asyncio.run(serve())


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(port: int, transport: str, concurrency: int, requests: int) -> float:
    """CPU ms per answer over `requests` per loop, after a warm-up of 5 each."""
    url = f"http://127.0.0.1:{port}/openai/deployments/bench/images/generations"
    async with new_client(timeout_s=30, transport=_TRANSPORTS[transport]()) as client:

        async def loop(count: int) -> None:
            for _ in range(count):
                response = await client.post(url, json={"prompt": "p", "n": 1})
                if len(response.content) < 10:
                    raise RuntimeError("short answer")

        await asyncio.gather(*(loop(5) for _ in range(concurrency)))
        start = _cpu_s()
        await asyncio.gather(*(loop(requests) for _ in range(concurrency)))
        return (_cpu_s() - start) * 1000 / (concurrency * requests)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.transport_read", description=__doc__
    )
    parser.add_argument("--body-bytes", type=int, default=4_200_000, help="base64 in the answer")
    parser.add_argument("-c", type=int, default=32, help="concurrent closed loops")
    parser.add_argument("--requests", type=int, default=50, help="measured requests per loop")
    parser.add_argument("--transport", choices=sorted(_TRANSPORTS), default="http1")
    parser.add_argument("--tuned-allocator", action="store_true")
    args = parser.parse_args()
    if args.tuned_allocator:
        keep_freed_buffers()
    body = _answer_body(args.body_bytes)
    with forked_server(functools.partial(_serve_forever, body)) as port:
        started = time.perf_counter()
        ms = asyncio.run(measure(port, args.transport, args.c, args.requests))
        elapsed = time.perf_counter() - started
    total = args.c * args.requests
    print(
        f"{args.transport}{' (tuned allocator)' if args.tuned_allocator else ''}: "
        f"{ms:.2f} ms CPU per {len(body):,}-byte answer, c={args.c}, "
        f"{total} answers in {elapsed:.1f} s"
    )


if __name__ == "__main__":
    main()
