"""Plumbing shared by every HTTP backend (Azure FLUX, Azure MAI, DashScope).

A backend builds one long-lived client with `new_client`, describes its
upstream with an `Upstream`, and makes each call through `send_with_retry`,
giving it a `parse` function for a 2xx response and, optionally, a
`classify` hook that recognises its upstream's special errors (a content
filter refusal, say) before the generic status mapping runs:

    return await send_with_retry(
        self._client, "POST", url,
        upstream=UPSTREAM, policy=self._retry, deadline=deadline,
        timeout_s=self._timeout_s, json_body=body, headers=auth,
        parse=parse_images, classify=content_filter,
    )

Every failure comes out as an `ImageServiceError`: transport failures via
`transport_errors`, HTTP statuses via `error_for_status`. Messages are
short and never contain an upstream body or a credential; upstream detail
goes to the log (status and error code at warning, a body excerpt at debug).
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from server.domain.deadline import Deadline
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
from server.domain.retry import RetryPolicy
from server.providers._shared.http1 import Http1Transport
from server.providers._shared.owned import Owned
from server.providers._shared.upstream import (
    CONNECT_TIMEOUT_S,
    DEFAULT_FIELD_HINTS,
    USER_AGENT,
    Upstream,
    attempt_within,
    blamed_field,
    safe_code,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Below most load balancers' idle timeouts, so we drop idle connections
# before the far side does and a request never lands on a dying one.
KEEPALIVE_EXPIRY_S = 30.0

_SECRETISH = re.compile(r"(?i)(bearer\s+|api[-_]?key[\"'=:\s]+)[^\s\"',]+")


@dataclass(frozen=True)
class UpstreamErrorBody:
    """The `code` and `message` of an upstream's JSON error body, if any.

    For classifiers to inspect; never copy `message` into an error the
    caller sees.
    """

    code: str = ""
    message: str = ""


Classifier = Callable[[httpx.Response], ImageServiceError | None]


class _NoCookies(httpx.Cookies):
    """A cookie jar that never takes a cookie."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Ignore the response's `Set-Cookie` headers."""


class UpstreamClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` without a cookie jar.

    Upstream APIs authenticate each call by key. A jar on the one client
    that carries every caller's calls would only hand one call's cookies
    (a load balancer's affinity cookie, say) to the next, and reading
    `Set-Cookie` builds two urllib wrappers per response: a tenth of the
    client's CPU per call.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        """Always empty."""
        return _NoCookies()

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise TypeError("an upstream client keeps no cookies")


def new_client(
    *,
    timeout_s: float,
    max_connections: int | None = None,
    user_agent: str = USER_AGENT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> UpstreamClient:
    """The one long-lived client of a backend; close it in the backend's `aclose`.

    `send_with_retry` overrides the timeout per attempt; the client's own
    is the ceiling for anything sent directly. Bytes move through
    `Http1Transport` unless a test passes its own `transport`. No cap on
    connections by default: how many calls run at once is
    `limits.LimitedBackend`'s job (`IMAGE_SERVICE_<BACKEND>_MAX_CONCURRENCY`,
    unset is no limit), and a pool cap would be a second, hidden limit that
    queues calls past it (with a 5 s upstream, 64 connections held 2,000
    generations to 13 a second). Idle connections close after
    `KEEPALIVE_EXPIRY_S`.
    """
    return UpstreamClient(
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S)),
        headers={"User-Agent": user_agent},
        transport=_traced(
            transport
            or Http1Transport(
                max_connections=max_connections, keepalive_expiry_s=KEEPALIVE_EXPIRY_S
            )
        ),
        follow_redirects=False,
    )


def _traced(transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
    """`transport` with a client span per upstream call (`http_spans`) when
    this process has a tracer provider, else unchanged, so that with tracing
    off no span code runs.

    `server.observability.tracing` installs the provider before any backend
    is built. The plumbing asks the OpenTelemetry API (the part made for
    libraries to call) rather than importing the service's tracing module.
    """
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return transport
    from server.providers._shared.http_spans import SpanningTransport

    return SpanningTransport(transport, provider.get_tracer(__name__))


def owned_client(
    client: httpx.AsyncClient | None,
    *,
    timeout_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
    max_connections: int | None = None,
) -> Owned[httpx.AsyncClient]:
    """`client` as given (its owner closes it), else a `new_client` this
    backend owns and closes in its `aclose`."""
    if client is not None:
        return Owned(client)
    made = new_client(timeout_s=timeout_s, transport=transport, max_connections=max_connections)
    return Owned(made, made.aclose)


@contextmanager
def transport_errors(upstream: Upstream) -> Iterator[None]:
    """Map httpx transport failures inside the block to domain errors.

    Failing to connect (including a connect or pool timeout) and a dropped
    or broken connection are `UpstreamUnavailable` (retried); a read or
    write timeout is `UpstreamTimeout`. Cancellation passes through.
    """
    try:
        yield
    except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        log.warning("%s: could not connect in time (%s)", upstream.name, type(exc).__name__)
        raise UpstreamUnavailable(
            f"Could not connect to {upstream.name} in time.", metadata={"upstream": upstream.key}
        ) from exc
    except httpx.TimeoutException as exc:
        log.warning("%s: timed out (%s)", upstream.name, type(exc).__name__)
        raise UpstreamTimeout(
            f"{upstream.name} did not answer in time.", metadata={"upstream": upstream.key}
        ) from exc
    except httpx.TransportError as exc:
        log.warning("%s: transport failure (%s)", upstream.name, type(exc).__name__)
        raise UpstreamUnavailable(
            f"The connection to {upstream.name} failed.", metadata={"upstream": upstream.key}
        ) from exc


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `Retry-After` (seconds or
    an HTTP date); None when absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    text = headers.get("retry-after")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, value)
    return value if value >= 0 else None


def upstream_error_body(response: httpx.Response) -> UpstreamErrorBody:
    """Read `{"error": {"code", "message"}}` (or a flat `code`/`message`)."""
    try:
        payload: Any = response.json()
    except (ValueError, UnicodeDecodeError):
        return UpstreamErrorBody()
    if not isinstance(payload, dict):
        return UpstreamErrorBody()
    error = payload.get("error", payload)
    if not isinstance(error, dict):
        return UpstreamErrorBody(message=str(error))
    code = error.get("code", "")
    inner = error.get("innererror")
    if isinstance(inner, dict) and inner.get("code"):
        code = code or inner["code"]
    message = error.get("message", "")
    return UpstreamErrorBody(
        code=str(code) if code is not None else "",
        message=message if isinstance(message, str) else "",
    )


def _redacted_excerpt(text: str, limit: int = 500) -> str:
    return _SECRETISH.sub(r"\1[redacted]", " ".join(text.split()))[:limit]


def error_for_status(
    response: httpx.Response,
    upstream: Upstream,
    *,
    classify: Classifier | None = None,
    field_hints: Sequence[tuple[str, str]] = DEFAULT_FIELD_HINTS,
) -> ImageServiceError:
    """The domain error for a non-2xx `response`; `classify` is asked first.

    400/413/422 and other 4xx → `UpstreamRejected` (blaming the field the
    upstream's message names, else the request as a whole); 401/403 →
    `UpstreamAuthFailed`; 404 → `BackendNotConfigured` (the endpoint or
    deployment is wrong: our configuration, not the caller's request);
    408/504 → `UpstreamTimeout`; 429 → `RateLimited`; 5xx and anything else
    → `UpstreamUnavailable`. Retry-After is kept on every error.
    """
    status = response.status_code
    body = upstream_error_body(response)
    log.warning(
        "%s answered HTTP %d (code %r) to %s %s",
        upstream.name,
        status,
        body.code,
        response.request.method,
        response.request.url.copy_with(query=None),
    )
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s error body: %s", upstream.name, _redacted_excerpt(response.text))
    if classify is not None:
        classified = classify(response)
        if classified is not None:
            return classified

    metadata = {"upstream": upstream.key, "upstream_status": str(status)}
    if code := safe_code(body.code):
        metadata["upstream_code"] = code
    retry_after = parse_retry_after(response.headers)
    name = upstream.name

    if status in (401, 403):
        return UpstreamAuthFailed(
            f"{name} refused the service's credentials; check {upstream.credential_setting}.",
            metadata=metadata,
        )
    if status == 404:
        setting = upstream.endpoint_setting or upstream.credential_setting
        return BackendNotConfigured(
            f"{name} has no such route or deployment; check {setting}.",
            metadata={**metadata, "setting": setting},
        )
    if status in (408, 504):
        return UpstreamTimeout(f"{name} timed out.", metadata=metadata, retry_after=retry_after)
    if status == 429:
        return RateLimited(
            f"{name} is rate limiting requests; retry later.",
            metadata=metadata,
            retry_after=retry_after,
        )
    if 400 <= status < 500:
        field = blamed_field(body.message, field_hints)
        return UpstreamRejected(
            [FieldViolation(field, f"rejected by {name}")],
            message=f"{name} rejected the request (HTTP {status}).",
            metadata=metadata,
        )
    return UpstreamUnavailable(
        f"{name} failed (HTTP {status}).", metadata=metadata, retry_after=retry_after
    )


@functools.lru_cache(maxsize=256)
def _target(url: str, params: tuple[tuple[str, str], ...]) -> httpx.URL:
    """`url` with `params` as its query, parsed once, as httpx builds it.

    httpx parses a URL string (and again to merge params) on every request,
    checking it a character at a time in Python: a sixth of the client's
    CPU per call. A backend calls the same few URLs over and over; a parsed
    `httpx.URL` is immutable, so one can serve every call.
    """
    # With params, httpx's Request replaces the URL's own query; so here.
    return httpx.URL(url, params=dict(params)) if params else httpx.URL(url)


async def send_once(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    upstream: Upstream,
    deadline: Deadline,
    timeout_s: float,
    content: bytes | None = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    classify: Classifier | None = None,
) -> httpx.Response:
    """One attempt: the 2xx response, or the domain error for the failure.

    The attempt (connect, send, whole body) is bounded by
    `min(timeout_s, deadline.remaining())`; running out of that is
    `UpstreamTimeout`, as is any failure once the deadline has passed.
    """

    target = _target(url, tuple(params.items()) if params else ())

    async def attempt(budget: float) -> httpx.Response:
        request = client.build_request(
            method,
            target,
            content=content,
            headers=headers,
            timeout=httpx.Timeout(budget, connect=min(budget, CONNECT_TIMEOUT_S)),
        )
        with transport_errors(upstream):
            return await client.send(request)

    response = await attempt_within(deadline, timeout_s, upstream, attempt)
    if response.is_success:
        return response
    raise error_for_status(response, upstream, classify=classify)


async def send_with_retry(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    upstream: Upstream,
    policy: RetryPolicy,
    deadline: Deadline,
    timeout_s: float,
    parse: Callable[[httpx.Response], T],
    json_body: object = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    classify: Classifier | None = None,
    body: bytes | None = None,
) -> T:
    """`send_once` and `parse` under `policy.run`, until success, a permanent
    error or the deadline.

    The request body is `json_body` (encoded here) or `body`, bytes already
    encoded (a multipart form: its Content-Type goes in `headers`).

    `parse` turns the 2xx response into the result and may raise domain
    errors itself (a retryable one, like a malformed body, is retried).
    """
    content = body
    request_headers = dict(headers or {})
    if json_body is not None:
        # Encoded once: a body can carry several base64 images.
        content = json.dumps(json_body, separators=(",", ":")).encode()
        request_headers.setdefault("Content-Type", "application/json")

    async def attempt() -> T:
        response = await send_once(
            client,
            method,
            url,
            upstream=upstream,
            deadline=deadline,
            timeout_s=timeout_s,
            content=content,
            params=params,
            headers=request_headers,
            classify=classify,
        )
        return parse(response)

    return await policy.run(attempt, deadline)
