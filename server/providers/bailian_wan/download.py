"""Downloading a finished task's images from Alibaba's result storage.

Result URLs expire after 24 hours, so the images are downloaded here (with
the backend's client, a bounded number at a time, never sending our key:
the URLs are signed) and the service stores them like any other backend's
bytes. The downloading itself is `_shared.downloads`.
"""

from __future__ import annotations

import httpx

from server.domain.retry import RetryPolicy
from server.providers._shared.downloads import ResultDownloader
from server.providers.bailian_wan.errors import UPSTREAM


def result_downloader(
    client: httpx.AsyncClient, *, concurrency: int, policy: RetryPolicy, timeout_s: float
) -> ResultDownloader:
    """A downloader for DashScope's result URLs (no credentials sent)."""
    return ResultDownloader(
        client,
        upstream=UPSTREAM,
        storage_name="DashScope result storage",
        concurrency=concurrency,
        policy=policy,
        timeout_s=timeout_s,
    )
