"""A `BlobStore` on Cloudflare R2 (or any S3-compatible store) through boto3.

R2 speaks the S3 API, so this is boto3's S3 client with the settings R2
needs and with the failure semantics the orchestrator relies on:

* Checksums only when an operation requires them. boto3 >= 1.36 adds CRC32
  checksums (and, for streamed bodies, `aws-chunked` trailers) to every
  upload by default, which R2 rejected in January 2025; `when_required`
  sends exactly what older SDKs sent. `PutObject` does not require one.
* No SHA-256 of the body over HTTPS. botocore would otherwise hash every
  upload for its signature (about 2 ms of CPU per 3 MiB image here,
  BENCHMARKS.md fix 29). With payload signing off it signs the headers
  and sends `x-amz-content-sha256: UNSIGNED-PAYLOAD`, which R2 accepts
  (Cloudflare's SDK examples turn payload signing off), and TLS carries
  the body's integrity. Over plain HTTP (only ever a local S3, such as
  the tests' moto) nothing else would, so there the body is still signed.
* boto3 is synchronous, so every call runs on a dedicated thread pool that
  is exactly as large as the HTTP connection pool: a burst of concurrent
  generations queues for a thread instead of opening (or waiting on)
  connections beyond the pool, and the event loop never blocks.
* botocore's own retries are off. The orchestrator's `RetryPolicy` retries
  `StorageUnavailable` with jittered backoff inside the caller's deadline;
  retrying in two layers would multiply attempts and overrun the deadline.
* Transient failures (connection errors, timeouts, 5xx, SlowDown/429) raise
  `StorageUnavailable` (retryable); permanent ones (AccessDenied,
  NoSuchBucket, InvalidAccessKeyId, bad signature, ...) raise
  `StorageRejected`. Neither message carries a credential or the upstream
  body, and the botocore exception is not chained, so nothing secret can
  reach a traceback either.

URLs: `public_base_url + "/" + key` (the bucket's custom domain on the R2
CDN; permanent). In private-bucket mode (`presign_ttl_s > 0`) `url_for`
returns a presigned GET instead, valid for `presign_ttl_s` seconds only.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from server.domain.errors import ImageServiceError, StorageRejected, StorageUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

T = TypeVar("T")

# Image keys embed a fresh generation id and are never rewritten, so CDNs
# and browsers may keep them for a year without revalidating.
IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"
# Records hold prompts and request ids: keep shared caches from holding
# copies should the bucket's public domain ever expose them.
PRIVATE_CACHE_CONTROL = "private, no-store"

# S3/R2 error codes worth retrying even when the status is below 500.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
    }
)
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


class R2Store:
    """Images and records in one R2 bucket; see the module docstring.

    Create it once at startup (building the boto3 client reads its service
    model from disk) and `aclose` it at shutdown. Safe to use from many
    concurrent tasks.
    """

    def __init__(
        self,
        *,
        endpoint_url: str,
        bucket: str,
        access_key_id: str,
        secret_access_key: str,
        public_base_url: str = "",
        region: str = "auto",
        presign_ttl_s: int = 0,
        max_connections: int = 32,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        if presign_ttl_s <= 0 and not public_base_url:
            raise ValueError("public_base_url is required unless presign_ttl_s > 0")
        self._bucket = bucket
        self._base_url = public_base_url.rstrip("/")
        self._presign_ttl_s = presign_ttl_s
        config = Config(
            region_name=region,
            signature_version="s3v4",
            # Path style works for every bucket name (dots included) under
            # the account endpoint's own TLS certificate.
            s3={
                "addressing_style": "path",
                "payload_signing_enabled": urlsplit(endpoint_url).scheme.lower() != "https",
            },
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=max_connections,
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": 1, "mode": "standard"},
            tcp_keepalive=True,
        )
        # A private session: the default one is shared module state and
        # creating clients from it is not thread-safe.
        session = boto3.session.Session()
        self._client: S3Client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=max_connections, thread_name_prefix="r2-store"
        )
        self._closed = False

    @property
    def bucket(self) -> str:
        """The bucket every object goes to."""
        return self._bucket

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Upload `data` as `key` with one `PutObject`.

        Images get `Cache-Control: public, max-age=31536000, immutable`;
        anything else (records) `private, no-store`. Raises
        `StorageUnavailable` (retryable) or `StorageRejected`.
        """
        cache_control = (
            IMMUTABLE_CACHE_CONTROL if content_type.startswith("image/") else PRIVATE_CACHE_CONTROL
        )

        def put_object() -> None:
            self._client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                CacheControl=cache_control,
            )

        await self._call("PutObject", key, put_object)

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if the bucket has no such key.

        A missing bucket is not a missing key: it raises `StorageRejected`.
        """

        def get_object() -> bytes | None:
            try:
                response = self._client.get_object(Bucket=self._bucket, Key=key)
            except ClientError as error:
                if _code(error) in _MISSING_KEY_CODES:
                    return None
                raise
            body = response["Body"]
            try:
                return body.read()
            finally:
                body.close()

        return await self._call("GetObject", key, get_object)

    def url_for(self, key: str) -> str:
        """The public CDN URL of `key`, or a presigned GET in private-bucket mode.

        Presigned URLs stop working after `presign_ttl_s` seconds; records
        keep keys, not URLs, so every read of a record presigns afresh.
        Presigning is local computation (no request), so this is cheap and
        does not block.
        """
        if self._presign_ttl_s > 0:
            return self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self._bucket, "Key": key},
                ExpiresIn=self._presign_ttl_s,
            )
        return f"{self._base_url}/{quote(key, safe='/')}"

    async def aclose(self) -> None:
        """Finish in-flight calls, then release the threads and connections."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    async def _call(self, operation: str, key: str, fn: Callable[[], T]) -> T:
        """Run a boto3 call on the store's pool, mapping failures to domain errors."""
        if self._closed:
            raise StorageUnavailable("The R2 store is shut down.", metadata={"key": key})
        loop = asyncio.get_running_loop()
        try:
            # The caller's context goes along, so the botocore span (when
            # tracing) is a child of the request's.
            return await loop.run_in_executor(self._executor, contextvars.copy_context().run, fn)
        except (ClientError, BotoCoreError) as error:
            mapped = _map_error(operation, key, error)
        # Raised outside the except block so the botocore exception is not
        # attached as __context__ (it may quote the upstream's error body).
        log.warning(
            "R2 %s %s failed: %s (%s)",
            operation,
            key,
            mapped.metadata.get("code", ""),
            mapped.reason,
        )
        raise mapped


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _retry_after(error: ClientError) -> float | None:
    headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    try:
        return max(0.0, float(headers["retry-after"]))
    except (KeyError, TypeError, ValueError):
        return None


def _map_error(operation: str, key: str, error: Exception) -> ImageServiceError:
    """The domain error for a botocore failure; never quotes the upstream."""
    if isinstance(error, ClientError):
        code, status = _code(error), _status(error)
        metadata = {"key": key, "operation": operation, "code": code, "status": str(status)}
        if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
            return StorageUnavailable(
                f"Storage is unavailable ({operation} answered {code or status}).",
                metadata=metadata,
                retry_after=_retry_after(error),
            )
        return StorageRejected(
            f"Storage refused {operation} ({code or status}); check the R2 bucket settings.",
            metadata=metadata,
        )
    # Connection refused/reset/closed, DNS, connect and read timeouts, a
    # response cut short: the network, not the request, is at fault.
    name = type(error).__name__
    metadata = {"key": key, "operation": operation, "code": name}
    if isinstance(error, BotoConnectionError | HTTPClientError):
        return StorageUnavailable(
            f"Storage is unreachable ({operation}: {name}).", metadata=metadata
        )
    # Anything else from botocore (missing credentials, parameter validation)
    # is a configuration problem that a retry repeats.
    return StorageRejected(f"Storage call {operation} failed ({name}).", metadata=metadata)
