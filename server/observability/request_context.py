"""The request being served: its id and what its access line will say.

Both processes keep one `RequestContext` per request in a context variable,
set by the gRPC interceptor or the REST middleware. asyncio copies context
into tasks a request starts, so every log line written on its behalf (a
backend's warning, a storage error) carries the request id, and the access
line gets the generation id, model and counts whoever learns them.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_METADATA = "x-request-id"
# Printable ASCII without spaces: safe as gRPC metadata and in log lines.
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


def request_id_or_new(candidate: str | None) -> str:
    """`candidate` when it is a usable request id, else a new `req-<hex>`."""
    if candidate and _REQUEST_ID.match(candidate):
        return candidate
    return f"req-{uuid.uuid4().hex}"


@dataclass
class RequestContext:
    """What is known about the request so far (the access line's fields)."""

    request_id: str
    generation_id: str = ""
    model: str = ""
    # The caller's API key id (never the key). Whatever authenticates the call
    # sets it on `current()`: the gRPC access interceptor runs outermost, so
    # an auth interceptor after it sees this context.
    key_id: str = ""
    images: int = 0
    cost: Decimal | None = None
    # The sidecar's: the trace context (`traceparent`, ...) of its span for
    # this request, sent as metadata with its calls to the server; empty
    # when the request is not traced.
    trace_metadata: tuple[tuple[str, str], ...] = ()


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "request_context", default=None
)


def current() -> RequestContext | None:
    """The request being served by this task, if any."""
    return _current.get()


@contextmanager
def serving(context: RequestContext) -> Iterator[RequestContext]:
    """Make `context` current for the code inside (and the tasks it starts)."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
