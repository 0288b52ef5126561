"""DashScope's errors → domain errors: the one code table, and errors in 200s.

`error_for_code` maps a DashScope error code, wherever it shows: an HTTP
error body (`classify_error`), the top level of an HTTP 200 body, or a
FAILED task's `output.code` (`error_in_body`). `DataInspectionFailed` is
`ContentRejected`; `Throttling*` is `RateLimited`; `InvalidApiKey`
`UpstreamAuthFailed`; `InvalidParameter*` `UpstreamRejected`;
`InternalError*` `UpstreamUnavailable`. The upstream's message only picks
the field to blame; it never reaches the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx

from server.domain.errors import (
    ContentRejected,
    FieldViolation,
    ImageServiceError,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.providers._shared.http import parse_retry_after, upstream_error_body
from server.providers._shared.upstream import Upstream, blamed_field, safe_code, unavailable
from server.providers.bailian_wan import PLUGIN

log = logging.getLogger(__name__)

UPSTREAM = Upstream(
    key=PLUGIN.key,
    name="DashScope",
    credential_setting=PLUGIN.env_var("api_key"),
    endpoint_setting=PLUGIN.env_var("base_url"),
)


def is_content_code(code: str) -> bool:
    """Whether a DashScope error code is a moderation refusal."""
    return (
        code == "DataInspectionFailed"
        or code.startswith("DataInspectionFailed.")
        or code == "IPInfringementSuspect"
    )


def error_metadata(code: str, status: int | None) -> dict[str, str]:
    """The error metadata: the upstream, its HTTP status, its code if it looks like one."""
    metadata = {"upstream": UPSTREAM.key}
    if status is not None:
        metadata["upstream_status"] = str(status)
    if safe_code(code):
        metadata["upstream_code"] = code
    return metadata


def content_rejected(metadata: dict[str, str]) -> ContentRejected:
    return ContentRejected(
        "DashScope's content moderation refused the prompt, an input image or the "
        "result; rephrase and try again.",
        metadata=metadata,
    )


def error_for_code(
    code: str,
    message: str = "",
    *,
    status: int | None = None,
    retry_after: float | None = None,
) -> ImageServiceError | None:
    """The domain error for a DashScope error `code`, or None for codes left
    to the HTTP status. `message` (the upstream's) only picks the field to
    blame; it never reaches the caller."""
    metadata = error_metadata(code, status)
    if is_content_code(code):
        return content_rejected(metadata)
    if code.startswith("Throttling"):
        return RateLimited(
            "DashScope is rate limiting requests; retry later.",
            metadata=metadata,
            retry_after=retry_after,
        )
    if code == "InvalidApiKey" or code.startswith("AccessDenied"):
        return UpstreamAuthFailed(
            "DashScope refused the service's API key for this model; check "
            f"{UPSTREAM.credential_setting} and its region ({UPSTREAM.endpoint_setting}).",
            metadata=metadata,
        )
    if code == "Arrearage":
        return UpstreamAuthFailed(
            "The DashScope account behind the service's API key is overdue.", metadata=metadata
        )
    if code.startswith("InternalError"):
        return UpstreamUnavailable(
            "DashScope failed internally; retry later.", metadata=metadata, retry_after=retry_after
        )
    if code == "RequestTimeOut":
        return UpstreamTimeout("DashScope timed out.", metadata=metadata)
    if code.startswith(("InvalidParameter", "BadRequest", "InvalidURL")):
        shown = f" ({code})" if "upstream_code" in metadata else ""
        return UpstreamRejected(
            [FieldViolation(blamed_field(message), "rejected by DashScope")],
            message=f"DashScope rejected the request{shown}.",
            metadata=metadata,
        )
    return None


def classify_error(response: httpx.Response) -> ImageServiceError | None:
    """`error_for_status` hook: DashScope's `{"code", "message"}` error bodies."""
    body = upstream_error_body(response)
    return error_for_code(
        body.code,
        body.message,
        status=response.status_code,
        retry_after=parse_retry_after(response.headers),
    )


# --- errors inside HTTP 200 bodies -----------------------------------------


def error_in_body(code: str, message: str) -> ImageServiceError:
    """The error for a `code` DashScope reported inside a 200 (never None)."""
    error = error_for_code(code, message)
    if error is not None:
        return error
    log.warning("DashScope reported error code %r in a successful response", code[:64])
    return UpstreamUnavailable("DashScope reported an error.", metadata=error_metadata(code, None))


def json_object(response: httpx.Response) -> dict[str, Any]:
    """A 200's body as a JSON object; `UpstreamUnavailable` if it is not one."""
    try:
        payload = response.json()
    except (ValueError, UnicodeDecodeError):
        raise unavailable(UPSTREAM, "DashScope returned an unreadable response.") from None
    if not isinstance(payload, dict):
        raise unavailable(UPSTREAM, "DashScope returned an unexpected response.")
    return payload


def code_and_message(holder: Mapping[str, Any]) -> tuple[str, str]:
    """`holder`'s `code` and `message` ("" for what is missing)."""
    code, message = holder.get("code"), holder.get("message")
    return (
        str(code) if code else "",
        message if isinstance(message, str) else "",
    )
