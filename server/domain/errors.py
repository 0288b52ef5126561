"""The service's error hierarchy.

Every failure the service reports is an `ImageServiceError` with a stable
`reason` (the `google.rpc.ErrorInfo.reason` callers switch on), a short
message that is safe to show (never an upstream body or a credential) and
string `metadata`. The rpc layer maps each class to a gRPC code in one table
(`server.rpc.status`); backends map their upstream's failures to these
classes in one place each.

    ImageServiceError
    ├── InvalidArgument            bad request fields (with field violations)
    │   ├── CapabilityNotSupported the model cannot do the operation asked
    │   └── UpstreamRejected       the upstream refused the parameters
    ├── ContentRejected            the upstream's safety system refused
    ├── ModelNotFound
    ├── GenerationNotFound
    ├── RequestIdConflict          request_id reused for a different request
    ├── BackendNotConfigured       no credentials for the model's backend
    ├── UpstreamAuthFailed         the upstream refused our credentials
    ├── RateLimited                upstream 429 / quota (retryable)
    ├── UpstreamUnavailable        upstream 5xx or connection failure (retryable)
    ├── UpstreamTimeout            upstream too slow / our deadline passed
    ├── StorageUnavailable         blob store failing after retries
    ├── InvalidApiKey              missing, malformed, unknown or revoked API key
    ├── ModelNotAllowed            the API key may not use the model
    ├── KeyRateLimited             the API key's requests-per-minute is spent
    ├── QuotaExceeded              the API key's daily images or monthly budget is spent
    ├── RequestInProgress          another replica is running this request id
    └── AuthUnavailable            the key store cannot be reached (fail closed)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field: `field` is the request field's name."""

    field: str
    description: str


class ImageServiceError(Exception):
    """Base of every error the service reports to callers."""

    reason = "INTERNAL"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        # Seconds the upstream asked us to wait, when it said.
        self.retry_after = retry_after


class InvalidArgument(ImageServiceError):
    """The request is malformed; `violations` name the offending fields."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: list[FieldViolation],
        *,
        message: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            message or "; ".join(f"{v.field}: {v.description}" for v in violations),
            metadata=metadata,
        )
        self.violations = violations


class CapabilityNotSupported(InvalidArgument):
    """The named model cannot perform the requested operation."""

    reason = "CAPABILITY_NOT_SUPPORTED"


class UpstreamRejected(InvalidArgument):
    """The upstream rejected the request's parameters (its 400)."""

    reason = "UPSTREAM_INVALID_REQUEST"


class ContentRejected(ImageServiceError):
    """The upstream's safety system refused the prompt, input or output.

    Never retried and never routed to another model.
    """

    reason = "CONTENT_POLICY_VIOLATION"


class ModelNotFound(ImageServiceError):
    reason = "MODEL_NOT_FOUND"


class ModelRetired(ImageServiceError):
    """The model was retired and this deployment refuses calls naming it.

    Metadata names the `successor` (empty when there is none) and the
    `retirement_date`.
    """

    reason = "MODEL_RETIRED"


class GenerationNotFound(ImageServiceError):
    reason = "GENERATION_NOT_FOUND"


class RequestIdConflict(ImageServiceError):
    """A request_id was reused for a request with different parameters."""

    reason = "REQUEST_ID_CONFLICT"


class BackendNotConfigured(ImageServiceError):
    """The model's backend has no credentials; metadata names the setting."""

    reason = "BACKEND_NOT_CONFIGURED"


class UpstreamAuthFailed(ImageServiceError):
    """The upstream refused this deployment's credentials (401/403)."""

    reason = "UPSTREAM_AUTH_FAILED"


class RateLimited(ImageServiceError):
    reason = "UPSTREAM_RATE_LIMITED"
    retryable = True


class UpstreamUnavailable(ImageServiceError):
    reason = "UPSTREAM_UNAVAILABLE"
    retryable = True


class UpstreamTimeout(ImageServiceError):
    reason = "UPSTREAM_TIMEOUT"


class StorageUnavailable(ImageServiceError):
    reason = "STORAGE_UNAVAILABLE"
    retryable = True


class StorageRejected(ImageServiceError):
    """The blob store refused this deployment's request for good.

    Wrong credentials, a missing bucket or a denied permission: retrying
    cannot help, so it is not retryable, unlike `StorageUnavailable`.
    Images still reach the caller inline; the message names no credential.
    """

    reason = "STORAGE_REJECTED"


class InvalidApiKey(ImageServiceError):
    """No usable API key: missing, malformed, unknown or revoked.

    The message never repeats the key (nor says which of these it was).
    """

    reason = "INVALID_API_KEY"


class ModelNotAllowed(ImageServiceError):
    """The caller's API key is not allowed to use the model."""

    reason = "MODEL_NOT_ALLOWED"


class KeyRateLimited(ImageServiceError):
    """The caller's API key made its requests-per-minute; `retry_after` says when to retry."""

    reason = "RATE_LIMIT_EXCEEDED"
    retryable = True


class QuotaExceeded(ImageServiceError):
    """The caller's API key spent a quota (images per day, monthly budget).

    `subject` and `description` become a `google.rpc.QuotaFailure`
    violation; `retry_after` is the time until the quota's period resets.
    """

    reason = "INSUFFICIENT_QUOTA"

    def __init__(
        self,
        message: str,
        *,
        subject: str = "",
        description: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata, retry_after=retry_after)
        self.subject = subject
        self.description = description


class RequestInProgress(ImageServiceError):
    """Another replica holds the lease of this (key, request id) and has not finished."""

    reason = "REQUEST_IN_PROGRESS"
    retryable = True


class AuthUnavailable(ImageServiceError):
    """The key store (or shared counters) could not be reached: calls are refused."""

    reason = "AUTH_UNAVAILABLE"
    retryable = True
