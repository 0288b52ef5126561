"""The one access line per RPC (gRPC server) and per HTTP request (sidecar).

Logger `server.access` at INFO. Fields (JSON keys, or `key=value` in text):
`request_id`, `trace_id`, `kind` (`rpc` or `http`), `method` (the full
gRPC method, or the HTTP method), `route` (HTTP route template), `status`
(gRPC code name or HTTP status), `latency_ms`, and when known
`generation_id`, `model`, `key_id`, `images`, `cost`. Never prompts, image
data or credentials: only ids, names from the catalogue and counts.
"""

from __future__ import annotations

import logging

from server.observability.logs import FIELDS_ATTR
from server.observability.request_context import RequestContext

log = logging.getLogger("server.access")


def log_access(
    context: RequestContext,
    *,
    kind: str,
    method: str,
    status: str,
    seconds: float,
    route: str = "",
) -> None:
    """Write the access line of the request `context` describes."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, object] = {
        "kind": kind,
        "method": method,
        "status": status,
        "latency_ms": round(seconds * 1000, 1),
        "generation_id": context.generation_id,
        "model": context.model,
        "key_id": context.key_id,
        "images": context.images,
        "cost": "" if context.cost is None else f"{context.cost:.8f}",
    }
    if route:
        fields["route"] = route
    summary = f"{method} {route} {status}" if route else f"{method} {status}"
    log.info("%s %.1f ms", summary, seconds * 1000, extra={FIELDS_ATTR: fields})
