"""Downloading a finished task's images from Alibaba's result storage.

Result URLs expire after 24 hours, so the images are downloaded here (with
the backend's client, a bounded number at a time, never sending our key)
and the service stores them like any other backend's bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

import httpx

from server.domain.deadline import Deadline
from server.domain.errors import ImageServiceError, UpstreamUnavailable
from server.domain.imaging import inspect
from server.domain.ports import ProducedImage
from server.domain.retry import RetryPolicy
from server.providers._shared.http import send_with_retry
from server.providers._shared.upstream import unavailable
from server.providers.bailian_wan.errors import UPSTREAM

log = logging.getLogger(__name__)

# The result images live on Alibaba's object storage behind signed URLs; it
# never sees our key, so its refusals must not read as "check the API key".
RESULT_STORAGE = replace(UPSTREAM, name="DashScope result storage")


def _classify_download(response: httpx.Response) -> ImageServiceError | None:
    if 400 <= response.status_code < 500 and response.status_code != 429:
        # An expired or mis-signed URL: nothing the caller or our key can fix.
        return UpstreamUnavailable(
            f"Could not download a result image from {RESULT_STORAGE.name} "
            f"(HTTP {response.status_code}).",
            metadata={"upstream": UPSTREAM.key, "upstream_status": str(response.status_code)},
        )
    return None


def _downloaded_image(response: httpx.Response) -> ProducedImage:
    data = response.content
    try:
        mime = inspect(data).mime_type
    except ValueError:
        raise unavailable(
            UPSTREAM, "DashScope's result storage returned something not an image."
        ) from None
    return ProducedImage(data=data, mime_type=mime)


class ResultDownloader:
    """Fetches result images over `client`, at most `concurrency` at a time."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        concurrency: int,
        policy: RetryPolicy,
        timeout_s: float,
    ) -> None:
        self._client = client
        self._slots = asyncio.Semaphore(concurrency)
        self._policy = policy
        self._timeout_s = timeout_s

    async def download_all(
        self, urls: Sequence[str], deadline: Deadline
    ) -> tuple[ProducedImage, ...]:
        """Every image that could be downloaded; the first error if none could."""
        outcomes = await asyncio.gather(
            *(self._download(url, deadline) for url in urls), return_exceptions=True
        )
        images: list[ProducedImage] = []
        first_error: ImageServiceError | None = None
        for outcome in outcomes:
            if isinstance(outcome, ProducedImage):
                images.append(outcome)
            elif isinstance(outcome, ImageServiceError):
                # The others are paid for too: return them, and the
                # orchestrator reports this one as missing.
                log.warning("a DashScope result image could not be downloaded: %s", outcome)
                first_error = first_error or outcome
            else:
                raise outcome
        if not images and first_error is not None:
            raise first_error
        return tuple(images)

    async def _download(self, url: str, deadline: Deadline) -> ProducedImage:
        if not url.startswith(("https://", "http://")):
            raise unavailable(UPSTREAM, "DashScope returned a malformed result URL.")
        async with self._slots:
            # No Authorization header: the URL is signed, and our key must
            # not travel to another host.
            return await send_with_retry(
                self._client,
                "GET",
                url,
                upstream=RESULT_STORAGE,
                policy=self._policy,
                deadline=deadline,
                timeout_s=self._timeout_s,
                parse=_downloaded_image,
                classify=_classify_download,
            )
