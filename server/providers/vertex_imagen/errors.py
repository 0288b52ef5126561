"""Vertex AI's errors → domain errors, in one place.

`error_for_exception` maps what the client raises (`google.api_core`
exceptions built from the gRPC status, google.auth errors) to the domain
errors. A 400 whose message says the prompt was blocked is
`ContentRejected`, never retried. Messages never carry Google's text; it
goes to the log (status and reason at warning, the message at debug).
"""

from __future__ import annotations

import logging
import re

from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.rpc import error_details_pb2

from server.domain.errors import (
    BackendNotConfigured,
    ContentRejected,
    FieldViolation,
    ImageServiceError,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.providers._shared.upstream import Upstream, blamed_field, safe_code, unavailable
from server.providers.vertex_imagen import PLUGIN

log = logging.getLogger(__name__)

UPSTREAM = Upstream(
    key=PLUGIN.key,
    name="Vertex AI Imagen",
    credential_setting=PLUGIN.env_var("credentials_file"),
    endpoint_setting=PLUGIN.env_var("api_endpoint"),
)
PROJECT_SETTING = PLUGIN.env_var("project")
LOCATION_SETTING = PLUGIN.env_var("location")

# Lower-case substrings of a 400's message → the request field to blame.
FIELD_HINTS: tuple[tuple[str, str], ...] = (
    ("aspectratio", "size"),
    ("aspect ratio", "size"),
    ("sampleimagesize", "size"),
    ("image size", "size"),
    ("samplecount", "n"),
    ("seed", "seed"),
    ("watermark", "seed"),
    ("prompt", "prompt"),
)
# How Vertex words a prompt its Responsible AI filter blocked, e.g. "The
# prompt could not be submitted. Your current safety filter threshold
# prohibited one or more words in this prompt. ... Support codes: 61493863".
_BLOCKED_WORDS = (
    "could not be submitted",
    "responsible ai",
    "safety filter",
    "sensitive words",
    "usage guidelines",
)
_SUPPORT_CODE = re.compile(r"\b\d{6,10}\b")


def content_rejected(reason_text: str = "") -> ContentRejected:
    metadata = {"upstream": UPSTREAM.key}
    codes = _SUPPORT_CODE.findall(reason_text)
    if codes:
        # Google's support codes identify the filter that fired; callers
        # quote them in feedback. Digits only, so safe to pass on.
        metadata["support_codes"] = ",".join(sorted(set(codes)))
    return ContentRejected(
        "Vertex AI Imagen's safety filters blocked the prompt or every image; "
        "rephrase and try again.",
        metadata=metadata,
    )


def _retry_delay(error: api_exceptions.GoogleAPICallError) -> float | None:
    for detail in error.details or ():
        if isinstance(detail, error_details_pb2.RetryInfo) and detail.HasField("retry_delay"):
            seconds: float = detail.retry_delay.seconds + detail.retry_delay.nanos / 1e9
            return max(0.0, seconds)
    return None


def error_for_exception(error: Exception, upstream_id: str) -> ImageServiceError:
    """The domain error for an exception the client raised (the one mapping)."""
    name = UPSTREAM.name
    if isinstance(error, auth_exceptions.GoogleAuthError):
        log.warning("%s: credentials failed (%s)", name, type(error).__name__)
        return UpstreamAuthFailed(
            f"{name} could not authenticate; check {UPSTREAM.credential_setting} "
            "or the Application Default Credentials.",
            metadata={"upstream": UPSTREAM.key},
        )
    if not isinstance(error, api_exceptions.GoogleAPICallError):
        log.warning("%s: call failed (%s)", name, type(error).__name__)
        return unavailable(UPSTREAM, f"The call to {name} failed.")
    status = error.grpc_status_code
    status_name = status.name if status is not None else f"HTTP {error.code}"
    message = error.message or ""
    log.warning(
        "%s answered %s (reason %r) to Predict on %s", name, status_name, error.reason, upstream_id
    )
    log.debug("%s error message: %s", name, " ".join(message.split())[:500])
    metadata = {"upstream": UPSTREAM.key, "upstream_status": status_name}
    if code := safe_code(error.reason):
        metadata["upstream_code"] = code

    if isinstance(error, api_exceptions.Unauthenticated | api_exceptions.PermissionDenied):
        return UpstreamAuthFailed(
            f"{name} refused the service's credentials or project; check "
            f"{UPSTREAM.credential_setting} (or the Application Default Credentials) "
            f"and {PROJECT_SETTING}.",
            metadata=metadata,
        )
    if isinstance(error, api_exceptions.NotFound):
        return BackendNotConfigured(
            f"{name} has no model {upstream_id} for this project and location; "
            f"check {LOCATION_SETTING}.",
            metadata={**metadata, "setting": LOCATION_SETTING},
        )
    if isinstance(error, api_exceptions.TooManyRequests):
        return RateLimited(
            f"{name} quota is exhausted; retry later.",
            metadata=metadata,
            retry_after=_retry_delay(error),
        )
    if isinstance(error, api_exceptions.DeadlineExceeded | api_exceptions.GatewayTimeout):
        return UpstreamTimeout(f"{name} did not answer in time.", metadata=metadata)
    # ABORTED and CANCELLED (from the server) are worth another attempt.
    transient = api_exceptions.Aborted | api_exceptions.Cancelled
    if isinstance(error, api_exceptions.ClientError) and not isinstance(error, transient):
        if any(word in message.lower() for word in _BLOCKED_WORDS):
            return content_rejected(message)
        return UpstreamRejected(
            [FieldViolation(blamed_field(message, FIELD_HINTS), f"rejected by {name}")],
            message=f"{name} rejected the request ({status_name}).",
            metadata=metadata,
        )
    # UNAVAILABLE, INTERNAL, UNKNOWN, ABORTED, a server-side CANCELLED: retried.
    return UpstreamUnavailable(f"{name} failed ({status_name}).", metadata=metadata)
