"""Log setup for both processes: text or JSON lines, request and trace ids
on every line, and third-party loggers that print bodies held down.

`IMAGE_SERVICE_LOG_FORMAT=json` writes one JSON object per line with
`time`, `level`, `logger`, `message`, the current `request_id`,
`trace_id`/`span_id` (when tracing is on) and, on access lines, the
request's fields (`server.observability.access`). `text` (the default) is
the classic single line with the same fields appended as `key=value`.

Why loggers are held down regardless of the level: at DEBUG, botocore logs
whole request bodies (Bedrock prompts, image bytes) and the SigV4
`Authorization` header; urllib3, httpx/httpcore, hpack, aiohttp and grpc
log headers or payload fragments; uvicorn's access logger duplicates ours
with raw query strings. None of them may ever reach the log.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Literal, TextIO

from opentelemetry import trace

from server.observability import request_context

LogFormat = Literal["json", "text"]

# Loggers that write request/response bodies, headers or credentials at
# DEBUG/INFO; they are capped at WARNING (failures still show).
HELD_DOWN = (
    "botocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "httpx",
    "httpcore",
    "hpack",
    "aiohttp",
    "grpc",
    "google",
    "google_genai",
    "uvicorn.access",
    "multipart",
    "python_multipart",
    "PIL",
    "opentelemetry",
)

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
FIELDS_ATTR = "fields"


def _context_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    context = request_context.current()
    if context is not None:
        fields["request_id"] = context.request_id
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    extra = getattr(record, FIELDS_ATTR, None)
    if isinstance(extra, dict):
        fields.update(extra)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module doc for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _context_fields(record)
        if not fields:
            return line
        pairs = " ".join(f"{key}={value}" for key, value in fields.items() if value != "")
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {pairs}{sep}{tail}"


def hold_down_third_party() -> None:
    """Cap the loggers in `HELD_DOWN` at WARNING."""
    for name in HELD_DOWN:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # NOTSET included
            logger.setLevel(logging.WARNING)


def configure_logging(level: str, fmt: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Send every log line to `stream` (stderr) in `fmt` at `level` (process-wide)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    hold_down_third_party()
