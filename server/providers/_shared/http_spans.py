"""A client span per upstream HTTP call, `traceparent` sent on.

`SpanningTransport` wraps the backends' httpx transport when the process
traces (`http.new_client`). Each request the transport sends (every retry,
poll and result download) is one span named by its method, kind CLIENT,
with the stable HTTP client attributes of OpenTelemetry's semantic
conventions: `http.request.method`, `url.full` (credentials and signed
query values such as `sig` redacted, as OpenTelemetry's own instrumentation
redacts them), `server.address`, `server.port`, and once answered
`http.response.status_code`. A status of 400 or more, or a failure to get
an answer, sets the span's status to ERROR and `error.type` (the status
code, or the exception's class name). No header, body or exception message
is recorded: they can carry prompts, images or upstream text.

OpenTelemetry's httpx instrumentation did this before, at about three
times the CPU: it parses every request's URL twice and normalises every
request and response header even when none is captured, about +190 µs a
request against +60 µs here (BENCHMARKS.md, round 6). Only the OpenTelemetry API (and its
URL redaction helper) is used, the part meant for libraries to call.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import httpx
from opentelemetry import propagate, trace
from opentelemetry.util.http import redact_url

_ERROR = trace.Status(trace.StatusCode.ERROR)


@functools.lru_cache(maxsize=256)
def _attributes(method: str, url: httpx.URL) -> Mapping[str, str | int]:
    """A request's span attributes; upstream URLs repeat, so parsed once."""
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "url.full": redact_url(str(url)),
        "server.address": url.host,
    }
    port = url.port or {"https": 443, "http": 80}.get(url.scheme)
    if port is not None:
        attributes["server.port"] = port
    return attributes


class SpanningTransport(httpx.AsyncBaseTransport):
    """`inner`, with a client span around each request (see the module doc)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, tracer: trace.Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with self._tracer.start_as_current_span(
            request.method,
            kind=trace.SpanKind.CLIENT,
            attributes=_attributes(request.method, request.url),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            propagate.inject(request.headers)
            try:
                response = await self._inner.handle_async_request(request)
            except Exception as error:  # a cancelled call is not an upstream error
                span.set_status(_ERROR)
                span.set_attribute("error.type", type(error).__qualname__)
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_status(_ERROR)
                span.set_attribute("error.type", str(response.status_code))
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()
