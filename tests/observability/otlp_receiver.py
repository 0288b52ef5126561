"""An OTLP/HTTP trace receiver in the test process: the real protobuf, decoded.

Serves `POST /v1/traces` (what `OTEL_EXPORTER_OTLP_ENDPOINT` points the
exporter's `/v1/traces` at) on 127.0.0.1, decodes each
`ExportTraceServiceRequest` with opentelemetry-proto and keeps the spans.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.asgi import AsgiServer


def _value(value: common_pb2.AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]


@dataclass
class OtlpReceiver:
    spans: list[Span] = field(default_factory=list)
    requests: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    endpoint: str = ""
    _server: AsgiServer | None = None

    async def _traces(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.headers["content-type"] == "application/x-protobuf"
        export = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        async with self._changed:
            self.requests += 1
            for resource_spans in export.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Span(
                                service=str(resource.get("service.name", "")),
                                name=span.name,
                                kind=span.kind,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                attributes={a.key: _value(a.value) for a in span.attributes},
                            )
                        )
            self._changed.notify_all()
        reply = trace_service_pb2.ExportTraceServiceResponse()
        return Response(reply.SerializeToString(), media_type="application/x-protobuf")

    async def start(self) -> str:
        """Serve; returns the endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT`."""
        routes = [Route("/v1/traces", self._traces, methods=["POST"])]
        self._server = AsgiServer(Starlette(routes=routes))
        await self._server.start()
        self.endpoint = self._server.base_url
        return self.endpoint

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()

    async def wait_for(self, done: Callable[[list[Span]], bool]) -> None:
        """Until `done(spans)` holds (each export wakes the check); 30 s at most."""
        async with asyncio.timeout(30), self._changed:
            await self._changed.wait_for(lambda: done(self.spans))

    def trace(self, trace_id: str) -> list[Span]:
        return [span for span in self.spans if span.trace_id == trace_id]
