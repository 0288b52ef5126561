"""Fetching result images an upstream answered with links instead of bytes.

DashScope's finished tasks and Azure FLUX's URL or polling answers name
images by URL (signed, short-lived). `ResultDownloader` fetches them with
the backend's own client, a bounded number at a time, retrying each GET
(never the paid generation), and checks that what came back is an image.

Our key travels only where `headers_for(url)` says; a backend gives it to
its own origin at most (`same_origin`), never to another host.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from urllib.parse import urlsplit

import httpx

from server.domain.deadline import Deadline
from server.domain.errors import ImageServiceError, UpstreamUnavailable
from server.domain.imaging import measure
from server.domain.ports import ProducedImage
from server.domain.retry import RetryPolicy
from server.providers._shared.http import send_with_retry
from server.providers._shared.upstream import Upstream, unavailable

log = logging.getLogger(__name__)

HeadersFor = Callable[[str], Mapping[str, str]]


def _no_headers(url: str) -> Mapping[str, str]:
    return {}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def same_origin(url: str, base_url: str) -> bool:
    """Whether `url` has `base_url`'s scheme, host and port."""
    return _origin(url) == _origin(base_url)


def is_http_url(value: object) -> bool:
    """Whether `value` is an absolute http(s) URL with a host."""
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        return False
    return bool(urlsplit(value).hostname)


class ResultDownloader:
    """Fetches result images over `client`, at most `concurrency` at a time.

    Failures name `storage` (the upstream with the word for where its
    results live, e.g. "DashScope result storage"): it never sees our key,
    so its refusals must not read as "check the API key".
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        upstream: Upstream,
        storage_name: str,
        concurrency: int,
        policy: RetryPolicy,
        timeout_s: float,
        headers_for: HeadersFor = _no_headers,
    ) -> None:
        self._client = client
        self._upstream = upstream
        self._storage = replace(upstream, name=storage_name)
        self._slots = asyncio.Semaphore(concurrency)
        self._policy = policy
        self._timeout_s = timeout_s
        self._headers_for = headers_for

    async def download_all(
        self, urls: Sequence[str], deadline: Deadline
    ) -> tuple[ProducedImage, ...]:
        """Every image that could be downloaded; the first error if none could."""
        outcomes = await asyncio.gather(
            *(self.download(url, deadline) for url in urls), return_exceptions=True
        )
        images: list[ProducedImage] = []
        first_error: ImageServiceError | None = None
        for outcome in outcomes:
            if isinstance(outcome, ProducedImage):
                images.append(outcome)
            elif isinstance(outcome, ImageServiceError):
                # The others are paid for too: return them, and the
                # orchestrator reports this one as missing.
                log.warning("a %s image could not be downloaded: %s", self._storage.name, outcome)
                first_error = first_error or outcome
            else:
                raise outcome
        if not images and first_error is not None:
            raise first_error
        return tuple(images)

    async def download(self, url: str, deadline: Deadline) -> ProducedImage:
        """One image, its GET retried within `deadline`."""
        if not is_http_url(url):
            raise unavailable(self._upstream, f"{self._upstream.name} returned a malformed URL.")
        async with self._slots:
            return await send_with_retry(
                self._client,
                "GET",
                url,
                upstream=self._storage,
                policy=self._policy,
                deadline=deadline,
                timeout_s=self._timeout_s,
                parse=self._image,
                headers=self._headers_for(url),
                classify=self._classify,
            )

    def _classify(self, response: httpx.Response) -> ImageServiceError | None:
        if 400 <= response.status_code < 500 and response.status_code != 429:
            # An expired or mis-signed URL: nothing the caller or our key can fix.
            return UpstreamUnavailable(
                f"Could not download a result image from {self._storage.name} "
                f"(HTTP {response.status_code}).",
                metadata={
                    "upstream": self._upstream.key,
                    "upstream_status": str(response.status_code),
                },
            )
        return None

    def _image(self, response: httpx.Response) -> ProducedImage:
        data = response.content
        try:
            mime = measure(data).mime_type
        except ValueError:
            raise unavailable(
                self._upstream, f"{self._storage.name} returned something not an image."
            ) from None
        return ProducedImage(data=data, mime_type=mime)
