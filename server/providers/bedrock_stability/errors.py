"""botocore's exceptions → domain errors, in one place.

`error_for_client_error` maps a `ClientError` (an HTTP answer) by its
`Error.Code`, else its HTTP status; `error_for_botocore_error` maps the
failures that are not answers (credentials, configuration, connections).
Messages never quote the upstream's text; `log_failure` logs it at debug.
"""

from __future__ import annotations

import logging

from botocore.exceptions import (
    BaseEndpointResolverError,
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    EndpointProviderError,
    InvalidConfigError,
    InvalidEndpointConfigurationError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    SSOError,
    TokenRetrievalError,
    UnsupportedSignatureVersionError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from server.domain.errors import (
    BackendNotConfigured,
    FieldViolation,
    ImageServiceError,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.providers._shared.upstream import Upstream, blamed_field, safe_code
from server.providers.bedrock_stability import PLUGIN

log = logging.getLogger(__name__)

UPSTREAM = Upstream(
    key=PLUGIN.key,
    name="Amazon Bedrock",
    # There is no credential setting: boto3's standard chain supplies them.
    credential_setting="the AWS credentials (boto3's standard chain)",
    endpoint_setting=PLUGIN.env_var("region"),
)
REGION_SETTING = PLUGIN.env_var("region")
ENDPOINT_SETTING = PLUGIN.env_var("endpoint_url")
CREDENTIALS_HINT = (
    "AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
    "IRSA or an instance role)"
)

_THROTTLED = frozenset({"ThrottlingException", "TooManyRequestsException"})
_UNAVAILABLE = frozenset(
    {
        "ModelNotReadyException",
        "InternalServerException",
        "ServiceUnavailableException",
        "ModelErrorException",
        "InternalFailure",
        "ServiceUnavailable",
    }
)
_AUTH = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
    }
)
# A 400 ValidationException also says this when the account lacks model access.
_ACCESS_WORDS = ("not authorized", "don't have access", "do not have access")
_CREDENTIALS_MISSING = (NoCredentialsError, PartialCredentialsError, ProfileNotFound)
_CREDENTIALS_FAILED = (CredentialRetrievalError, SSOError, TokenRetrievalError)
# The client cannot even build the request: region, endpoint or auth setup.
_MISCONFIGURED = (
    BaseEndpointResolverError,
    EndpointProviderError,
    InvalidConfigError,
    InvalidEndpointConfigurationError,
    UnsupportedSignatureVersionError,
)


def _error_code(error: ClientError) -> str:
    """The error code, if it looks like one (it ends up in messages and metadata)."""
    return safe_code(str(error.response.get("Error", {}).get("Code", "")))


def _error_status(error: ClientError) -> int:
    try:
        return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    except (TypeError, ValueError):
        return 0


def _retry_after(error: ClientError) -> float | None:
    # Bedrock documents no Retry-After; honour one if it ever comes.
    headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    try:
        value = float(headers["retry-after"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if value >= 0 else None


def error_for_client_error(error: ClientError) -> ImageServiceError:
    """The domain error for a Bedrock `ClientError`, by `Error.Code`, else HTTP status.

    Never quotes the upstream's message (it goes to the debug log only).
    """
    code, status = _error_code(error), _error_status(error)
    message = str(error.response.get("Error", {}).get("Message", ""))
    metadata = {"upstream": UPSTREAM.key, "upstream_status": str(status)}
    if code:
        metadata["upstream_code"] = code
    name = UPSTREAM.name
    retry_after = _retry_after(error)

    if code in _THROTTLED or (status == 429 and code not in _UNAVAILABLE):
        return RateLimited(
            f"{name} is throttling requests; retry later.",
            metadata=metadata,
            retry_after=retry_after,
        )
    if code == "ServiceQuotaExceededException":
        quota = RateLimited(
            f"{name} says the account's service quota is used up; raise it or retry later.",
            metadata=metadata,
        )
        # Exhausted, but not something a retry within this request can fix.
        quota.retryable = False
        return quota
    if code in _UNAVAILABLE or status >= 500:
        return UpstreamUnavailable(
            f"{name} failed ({code or f'HTTP {status}'}).",
            metadata=metadata,
            retry_after=retry_after,
        )
    if code == "ModelTimeoutException" or status in (408, 504):
        return UpstreamTimeout(f"The model on {name} timed out.", metadata=metadata)
    if (
        code in _AUTH
        or status in (401, 403)
        or (code == "ValidationException" and any(w in message.lower() for w in _ACCESS_WORDS))
    ):
        return UpstreamAuthFailed(
            f"{name} refused the service's credentials or model access; check the "
            f"{CREDENTIALS_HINT} and that model access is granted in {REGION_SETTING}.",
            metadata=metadata,
        )
    if code == "ResourceNotFoundException" or status == 404:
        return BackendNotConfigured(
            f"{name} has no such model in this region; check {REGION_SETTING} "
            "and the catalogue's model id.",
            metadata={**metadata, "setting": REGION_SETTING},
        )
    field = blamed_field(message)
    return UpstreamRejected(
        [FieldViolation(field, f"rejected by {name}")],
        message=f"{name} rejected the request ({code or f'HTTP {status}'}).",
        metadata=metadata,
    )


def error_for_botocore_error(error: BotoCoreError) -> ImageServiceError:
    """The domain error for a botocore failure that is not an HTTP answer."""
    metadata = {"upstream": UPSTREAM.key, "error": type(error).__name__}
    name = UPSTREAM.name
    if isinstance(error, _CREDENTIALS_MISSING):
        return BackendNotConfigured(
            f"No AWS credentials were found for {name}; provide {CREDENTIALS_HINT}.",
            metadata={**metadata, "setting": CREDENTIALS_HINT},
        )
    if isinstance(error, _MISCONFIGURED):
        return BackendNotConfigured(
            f"The {name} client is misconfigured; check {REGION_SETTING} and "
            f"{ENDPOINT_SETTING} (bearer API keys need an https endpoint).",
            metadata={**metadata, "setting": REGION_SETTING},
        )
    if isinstance(error, _CREDENTIALS_FAILED):
        return UpstreamAuthFailed(
            f"Could not obtain AWS credentials for {name}; check the {CREDENTIALS_HINT}.",
            metadata=metadata,
        )
    if isinstance(error, ConnectTimeoutError | EndpointConnectionError):
        return UpstreamUnavailable(f"Could not connect to {name}.", metadata=metadata)
    if isinstance(error, ReadTimeoutError):
        return UpstreamTimeout(f"{name} did not answer in time.", metadata=metadata)
    if isinstance(error, BotoConnectionError | ConnectionClosedError):
        return UpstreamUnavailable(f"The connection to {name} failed.", metadata=metadata)
    # Truncated bodies (IncompleteReadError, ResponseStreamingError) and other
    # transport trouble: retry. Parameter validation would be our bug, but
    # request bodies are opaque bytes to botocore, so it cannot occur here.
    return UpstreamUnavailable(f"The call to {name} failed.", metadata=metadata)


def log_failure(error: ImageServiceError, model_id: str, detail: str) -> None:
    """One warning per failed attempt; the upstream's own message at debug only."""
    log.warning(
        "%s: %s for %s (%s)",
        UPSTREAM.name,
        error.metadata.get("upstream_code") or error.metadata.get("error", ""),
        model_id,
        error.reason,
    )
    if detail and log.isEnabledFor(logging.DEBUG):
        log.debug("%s error message: %s", UPSTREAM.name, " ".join(detail.split())[:500])
