"""Amazon Bedrock Runtime: the Stability AI models, through boto3's `invoke_model`.

    POST https://bedrock-runtime.{region}.amazonaws.com/model/{modelId}/invoke   (SigV4)
    {"prompt": ..., "aspect_ratio": "16:9", "seed": 7, "output_format": "png"}
    → {"seeds": [7], "finish_reasons": [null], "images": ["<base64 PNG>"]}

The catalogue's `upstream_id` is the `modelId`; the request body follows the
operation:

- generate (SD3.5 Large, Stable Image Core, Stable Image Ultra): `prompt`,
  `aspect_ratio`, `seed`, `output_format`, and for SD3.5 `mode:
  "text-to-image"`. The upstream takes no pixel sizes, only a ratio enum, so
  the requested size becomes the nearest of `ASPECT_RATIOS` (1024x1024 →
  1:1, 1792x1024 → 16:9, 1024x1792 → 9:16) and the upstream renders about
  one megapixel at it (16:9 → 1344x768); the domain measures what came back.
- remove_background: `image`, `output_format` (PNG, to keep the alpha).
- inpaint: `image`, `mask` (the domain's grayscale PNG, white = repaint),
  `prompt`, `grow_mask`, `seed`, `output_format`.
- upscale: the Image Services tool the model id names. Fast upscale takes
  `image` only (4x); conservative upscale also needs `prompt`, so an
  upscale without one is refused here rather than by the upstream.

Images go both ways as base64 strings in JSON. One image per call: there is
no count field, so `n` fans out in the orchestrator.

A non-null `finish_reasons` entry starting "Filter reason:" (prompt, input
image, output image) comes with HTTP 200 and is `ContentRejected`, never
retried; "Inference error" is `UpstreamUnavailable` (retried). botocore's
`ClientError` is mapped by `Error.Code` in `error_for_client_error`.

boto3 is synchronous: each call runs on the backend's own thread pool, as
large as botocore's connection pool, so a burst queues for a thread instead
of piling onto the event loop or overrunning the pool. botocore's retries are
off (one `RetryPolicy` governs every backend). What botocore does not allow,
and what that costs, is in `BedrockStabilityBackend`'s docstring.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
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
from pydantic import SecretStr

from server.domain.deadline import Deadline
from server.domain.errors import (
    BackendNotConfigured,
    CapabilityNotSupported,
    ContentRejected,
    FieldViolation,
    ImageServiceError,
    InvalidArgument,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.domain.ports import ProducedImage, UpstreamCall, UpstreamResult
from server.domain.requests import Operation, Size
from server.domain.retry import RetryPolicy
from server.providers.http import CONNECT_TIMEOUT_S, USER_AGENT, Upstream, blamed_field

if TYPE_CHECKING:
    from mypy_boto3_bedrock_runtime import BedrockRuntimeClient

log = logging.getLogger(__name__)

UPSTREAM = Upstream(
    key="bedrock_stability",
    name="Amazon Bedrock",
    # There is no credential setting: boto3's standard chain supplies them.
    credential_setting="the AWS credentials (boto3's standard chain)",
    endpoint_setting="IMAGE_SERVICE_BEDROCK_REGION",
)
REGION_SETTING = "IMAGE_SERVICE_BEDROCK_REGION"
CREDENTIALS_HINT = (
    "AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
    "IRSA or an instance role)"
)

# Text-to-image ratios of SD3.5 Large, Stable Image Core and Ultra.
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21")
MAX_SEED = 4_294_967_294
DEFAULT_GROW_MASK = 5

_FILTER_PREFIX = "filter reason:"
_SAFE_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
_FILTER_TARGETS = frozenset({"prompt", "input image", "output image"})

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


def aspect_ratio_for(size: Size) -> str:
    """The entry of `ASPECT_RATIOS` closest to `size`'s proportions."""
    return size.nearest_ratio(ASPECT_RATIOS)


def upstream_seed(seed: int | None) -> int:
    """`seed` in the upstream's range; 0 (the upstream's "random") when unset."""
    return 0 if seed is None else seed % (MAX_SEED + 1)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _one_input_image(call: UpstreamCall) -> str:
    if len(call.images) != 1:
        raise InvalidArgument(
            [FieldViolation("images", f"{call.model.name} takes exactly one input image")]
        )
    return _b64(call.images[0])


def _upscaler(model_id: str) -> str:
    for kind in ("conservative", "creative", "fast"):
        if f"{kind}-upscale" in model_id:
            return kind
    raise ImageServiceError(f"Catalogue entry {model_id!r} names no known Stability upscaler.")


def _upscale_body(call: UpstreamCall) -> dict[str, Any]:
    body: dict[str, Any] = {"image": _one_input_image(call), "output_format": "png"}
    kind = _upscaler(call.model.upstream_id)
    if kind == "fast":
        return body
    if not call.prompt.strip():
        raise InvalidArgument(
            [FieldViolation("prompt", f"is required by {call.model.name} (it guides the upscale)")]
        )
    body["prompt"] = call.prompt
    body["seed"] = upstream_seed(call.seed)
    return body


def request_body(call: UpstreamCall) -> dict[str, Any]:
    """The InvokeModel JSON body for `call`; raises for what the model cannot do."""
    if call.count != 1:
        raise ImageServiceError("Stability models on Bedrock produce one image per call.")
    operation = call.operation
    if operation is Operation.GENERATE:
        body: dict[str, Any] = {
            "prompt": call.prompt,
            "aspect_ratio": aspect_ratio_for(call.size or Size(1024, 1024)),
            "seed": upstream_seed(call.seed),
            "output_format": "png",
        }
        if "sd3" in call.model.upstream_id:
            body["mode"] = "text-to-image"
        return body
    if operation is Operation.REMOVE_BACKGROUND:
        return {"image": _one_input_image(call), "output_format": "png"}
    if operation is Operation.INPAINT:
        if call.mask is None:
            raise InvalidArgument([FieldViolation("mask", "is required for inpaint")])
        return {
            "image": _one_input_image(call),
            "mask": _b64(call.mask),
            "prompt": call.prompt,
            "grow_mask": DEFAULT_GROW_MASK,
            "seed": upstream_seed(call.seed),
            "output_format": "png",
        }
    if operation is Operation.UPSCALE:
        return _upscale_body(call)
    raise CapabilityNotSupported(
        [FieldViolation("operation", f"{call.model.name} cannot {operation.value} on Bedrock")]
    )


def _mime_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _unavailable(message: str) -> UpstreamUnavailable:
    # Retried: a malformed 200 is most likely a glitch on the way back.
    return UpstreamUnavailable(message, metadata={"upstream": UPSTREAM.key})


def _filter_target(reason: str) -> str:
    """`prompt`, `input image` or `output image` from "Filter reason: ...";
    `request` for anything else (upstream text never reaches the caller)."""
    target = reason.split(":", 1)[1].strip().lower()
    return target if target in _FILTER_TARGETS else "request"


def parse_response(raw: bytes) -> UpstreamResult:
    """Images from an InvokeModel 200 body; every image filtered → `ContentRejected`."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _unavailable("Amazon Bedrock returned an unreadable response.") from None
    if not isinstance(payload, dict):
        raise _unavailable("Amazon Bedrock returned an unreadable response.")
    images = payload.get("images") or []
    reasons = payload.get("finish_reasons") or []
    if not isinstance(images, list) or not isinstance(reasons, list):
        raise _unavailable("Amazon Bedrock returned an unreadable response.")
    produced: list[ProducedImage] = []
    filtered: list[str] = []
    inference_errors = 0
    for index in range(max(len(images), len(reasons))):
        reason = reasons[index] if index < len(reasons) else None
        if isinstance(reason, str) and reason.strip():
            lowered = reason.strip().lower()
            if lowered.startswith(_FILTER_PREFIX):
                filtered.append(_filter_target(reason))
            else:
                inference_errors += 1
            continue
        encoded = images[index] if index < len(images) else None
        if not isinstance(encoded, str) or not encoded:
            continue
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _unavailable("Amazon Bedrock returned a corrupt image.") from None
        produced.append(ProducedImage(data=data, mime_type=_mime_type(data)))
    if produced:
        return UpstreamResult(images=tuple(produced), filtered=len(filtered))
    if filtered:
        targets = sorted(set(filtered))
        raise ContentRejected(
            f"The Stability model's safety filter refused the {' and '.join(targets)}; "
            "change it and try again.",
            metadata={"upstream": UPSTREAM.key, "filter": ",".join(targets)},
        )
    if inference_errors:
        raise _unavailable("The Stability model failed to produce an image (inference error).")
    raise _unavailable("Amazon Bedrock returned no image.")


def _error_code(error: ClientError) -> str:
    """The error code, if it looks like one (it ends up in messages and metadata)."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code if _SAFE_CODE.fullmatch(code) else ""


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
            "IMAGE_SERVICE_BEDROCK_ENDPOINT_URL (bearer API keys need an https endpoint).",
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


def _log_failure(error: ImageServiceError, model_id: str, detail: str) -> None:
    log.warning(
        "%s: %s for %s (%s)",
        UPSTREAM.name,
        error.metadata.get("upstream_code") or error.metadata.get("error", ""),
        model_id,
        error.reason,
    )
    if detail and log.isEnabledFor(logging.DEBUG):
        log.debug("%s error message: %s", UPSTREAM.name, " ".join(detail.split())[:500])


class BedrockStabilityBackend:
    """`ImageBackend` for the Stability models on Amazon Bedrock Runtime.

    One boto3 client, made here and shared by every call (botocore clients are
    thread-safe; making one per call would re-read the service model each
    time). Its configuration:

    - retries: one attempt (`total_max_attempts=1`); `RetryPolicy` retries
      with jittered backoff inside the caller's deadline.
    - `connect_timeout` = min(10 s, `timeout_s`), `read_timeout` =
      `timeout_s`. botocore fixes timeouts per client, not per call, and
      `read_timeout` bounds each socket read, not the whole call.
    - `max_pool_connections` = `max_connections` = the thread pool's size.

    Deadlines and cancellation: each attempt is awaited for at most
    min(`timeout_s`, time left), and a cancelled RPC stops waiting at once
    (a call still queued for a thread never starts). botocore cannot abort a
    request already on the wire, though: its thread keeps the connection
    until the upstream answers or `read_timeout` passes, and the answer is
    discarded. Bedrock may bill such an abandoned image; the thread pool
    bounds how many can be outstanding.

    Credentials come from boto3's standard chain unless `access_key_id` and
    `secret_access_key` are both given (the sandbox's static keys).
    """

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str | None = None,
        access_key_id: SecretStr | None = None,
        secret_access_key: SecretStr | None = None,
        timeout_s: float = 120.0,
        max_connections: int = 16,
        retry: RetryPolicy | None = None,
        session: boto3.session.Session | None = None,
    ) -> None:
        """`session` (tests share one, to load botocore's service model once)
        defaults to a new private session."""
        if not region:
            raise ValueError(f"{REGION_SETTING} is required")
        if endpoint_url and not endpoint_url.startswith(("http://", "https://")):
            raise ValueError("IMAGE_SERVICE_BEDROCK_ENDPOINT_URL must be an http(s) URL")
        key_id, secret = _given(access_key_id), _given(secret_access_key)
        if (key_id is None) != (secret is None):
            raise ValueError(
                "IMAGE_SERVICE_BEDROCK_ACCESS_KEY_ID and IMAGE_SERVICE_BEDROCK_SECRET_ACCESS_KEY "
                "must be set together (or neither, to use the standard credential chain)"
            )
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        auth: dict[str, Any] = {}
        if key_id is not None:
            # With the sandbox's static keys, sign with them even when the
            # environment holds a Bedrock API key (AWS_BEARER_TOKEN_BEDROCK),
            # which botocore would otherwise prefer. Otherwise botocore
            # chooses: SigV4 from the chain, or the API key if one is set.
            # (A dict because botocore-stubs predate this option.)
            auth["auth_scheme_preference"] = "sigv4"
        config = Config(
            region_name=region,
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=min(CONNECT_TIMEOUT_S, timeout_s),
            read_timeout=timeout_s,
            max_pool_connections=max_connections,
            tcp_keepalive=True,
            user_agent_extra=USER_AGENT,
            **auth,
        )
        # A private session: the default one is module state, and creating
        # clients from it is not thread-safe. With no keys given (None),
        # botocore resolves credentials through its standard chain, lazily,
        # on the first call (so on a pool thread, never on the loop).
        session = session or boto3.session.Session()
        self._client: BedrockRuntimeClient = session.client(
            "bedrock-runtime",
            region_name=region,
            endpoint_url=endpoint_url or None,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=config,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=max_connections, thread_name_prefix="bedrock-stability"
        )
        self._closed = False

    def _invoke(self, model_id: str, body: bytes) -> UpstreamResult:
        """One InvokeModel, body read and parsed; runs on the thread pool."""
        response = self._client.invoke_model(
            modelId=model_id, body=body, contentType="application/json", accept="application/json"
        )
        stream = response["body"]
        try:
            raw = stream.read()
        finally:
            stream.close()
        return parse_response(raw)

    async def _attempt(self, model_id: str, body: bytes, deadline: Deadline) -> UpstreamResult:
        if self._closed:
            raise UpstreamUnavailable(
                "The Bedrock backend is shut down.", metadata={"upstream": UPSTREAM.key}
            )
        budget = deadline.cap(self._timeout_s)
        if budget <= 0:
            raise UpstreamTimeout(
                "The deadline passed before the upstream answered.",
                metadata={"upstream": UPSTREAM.key},
            )
        loop = asyncio.get_running_loop()
        detail = ""
        try:
            async with asyncio.timeout(budget):
                return await loop.run_in_executor(self._executor, self._invoke, model_id, body)
        except ClientError as error:
            mapped = error_for_client_error(error)
            detail = str(error.response.get("Error", {}).get("Message", ""))
        except BotoCoreError as error:
            mapped = error_for_botocore_error(error)
        except TimeoutError:
            mapped = UpstreamTimeout(
                f"{UPSTREAM.name} did not answer in time.", metadata={"upstream": UPSTREAM.key}
            )
        if deadline.expired() and not isinstance(mapped, UpstreamTimeout):
            mapped = UpstreamTimeout(
                f"{UPSTREAM.name} did not answer in time.", metadata=mapped.metadata
            )
        _log_failure(mapped, model_id, detail)
        # Raised outside the except blocks so the botocore exception (which
        # quotes the upstream's message) is not attached as __context__.
        raise mapped

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """One Stability generation or edit, retried within `deadline`."""
        if call.images:
            # Base64 of a multi-megapixel input is worth keeping off the loop.
            body = await asyncio.to_thread(_encoded_body, call)
        else:
            body = _encoded_body(call)
        model_id = call.model.upstream_id
        return await self._retry.run(lambda: self._attempt(model_id, body, deadline), deadline)

    async def aclose(self) -> None:
        """Stop accepting calls and release the pool without waiting for
        abandoned calls (they end at `read_timeout` at the latest)."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._client.close)


def _given(secret: SecretStr | None) -> str | None:
    """The secret's value, or None when unset or empty (an empty variable)."""
    value = secret.get_secret_value() if secret is not None else ""
    return value or None


def _encoded_body(call: UpstreamCall) -> bytes:
    return json.dumps(request_body(call), separators=(",", ":")).encode()
