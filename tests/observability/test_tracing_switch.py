"""When the standard OTEL_* variables turn tracing on, and that off means off."""

from __future__ import annotations

import pytest

from server.observability import tracing


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "image-service"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ],
)
def test_tracing_is_wanted_only_when_asked_for(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


def test_off_adds_nothing_to_either_server() -> None:
    assert tracing.setup_tracing("image-service", {}) is False
    assert not tracing.active()
    assert tracing.tracer("server.rpc") is None
    assert tracing.tracer("server.rest") is None
