"""What the two Azure AI Foundry emulators (FLUX, MAI) answer alike.

Both routes live on one Azure resource, so they share its error body
(`{"error": {"code", "message", ...}}`), its 401 for a wrong key, its
rate-limit headers and the way a hung or cut request looks. What differs
(auth header, routes, validation, the wording of most errors) stays in each
emulator.
"""

from __future__ import annotations

import hmac
import math
from typing import Any

from starlette.responses import JSONResponse, Response

from server.sandbox.faults import DroppedResponse, Fault, FaultMode

INVALID_KEY_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. "
    "Make sure to provide a valid key for an active subscription and use a "
    "correct regional API endpoint for your resource."
)


def azure_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """Azure's error body; `extra` adds fields beside code and message."""
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status, headers)


def key_matches(presented: str, api_key: str) -> bool:
    """Whether a presented key is the resource's (compared in constant time)."""
    return hmac.compare_digest(presented.strip().encode(), api_key.encode())


def invalid_key() -> Response:
    return azure_error(401, "401", INVALID_KEY_MESSAGE)


def unsupported_api_version() -> Response:
    return azure_error(400, "UnsupportedApiVersion", "API version not supported.")


def retry_headers(seconds: float) -> dict[str, str]:
    # Azure sends both; clients that read only Retry-After get whole seconds.
    return {"Retry-After": str(math.ceil(seconds)), "retry-after-ms": str(round(seconds * 1000))}


def hung_or_cut(fault: Fault) -> Response:
    """The answer to TIMEOUT (a late 504, if anyone still waits) or
    DROP_CONNECTION (a `{"data":[{"b64_json":...` body cut short)."""
    if fault.mode is FaultMode.TIMEOUT:
        return azure_error(504, "Timeout", "The operation timed out.")
    if fault.mode is FaultMode.DROP_CONNECTION:
        return DroppedResponse(
            partial=b'{"data":[{"b64_json":"iVBORw0KGgo',
            content_length=64 * 1024,
            media_type="application/json",
        )
    raise AssertionError(f"unhandled fault {fault.mode}")
