"""Metrics, traces, logs and request ids for both processes.

`metrics` names every Prometheus metric; `logs` sets up text/JSON logging and
holds down third-party loggers; `access` writes the one access line per
request; `request_context` carries the request id and the access line's
fields; `tracing` sets up OpenTelemetry from the standard `OTEL_*`
variables. Only `server/rpc` (interceptors) and `server/rest` (middleware)
hook these into the servers; the domain reports through its own
`server.domain.telemetry` protocol.
"""
