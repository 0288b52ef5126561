"""`AzureFluxBackend`: the one HTTP client, the retried submission, and what
follows an answer that names its image instead of carrying it.

Only the submission is retried as a submission. A link answer's image is
fetched, and a polling answer is polled until the task is `Ready` and its
sample fetched; each of those GETs is retried on its own within the
deadline, and running out of deadline while polling is `UpstreamTimeout`,
never a second generation. The key goes only to the configured endpoint's
origin: a result or polling URL on any other host is fetched without it
(BFL's result URLs are signed).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from server.domain.deadline import Deadline
from server.domain.errors import ImageServiceError, UpstreamTimeout
from server.domain.ports import UpstreamCall, UpstreamResult
from server.domain.retry import RetryPolicy
from server.providers._shared.downloads import ResultDownloader, is_http_url, same_origin
from server.providers._shared.http import owned_client, send_with_retry
from server.providers._shared.polling import PollPacing, check_poll_interval
from server.providers.azure_flux.errors import UPSTREAM, classify_content_filter
from server.providers.azure_flux.request import request_body
from server.providers.azure_flux.response import (
    ImageLinks,
    PollingLink,
    malformed_link,
    parse_poll,
    parse_submission,
)


class AzureFluxBackend:
    """`ImageBackend` for the FLUX models on one Azure AI Foundry resource."""

    def __init__(
        self,
        *,
        endpoint: str,
        api_key: SecretStr,
        api_version: str = "preview",
        timeout_s: float = 180.0,
        poll_initial_s: float = 0.5,
        poll_max_s: float = 5.0,
        retry: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`client` is used as given and not closed; otherwise one is made
        (over `transport`, if given) and closed by `aclose`."""
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError("the Azure FLUX endpoint must be an http(s) URL")
        check_poll_interval(poll_initial_s, poll_max_s)
        self._endpoint = endpoint.rstrip("/")
        self._api_key = api_key
        self._api_version = api_version
        self._timeout_s = timeout_s
        self._poll_initial_s = poll_initial_s
        self._poll_max_s = poll_max_s
        self._retry = retry or RetryPolicy()
        self._http = owned_client(client, timeout_s=timeout_s, transport=transport)
        self._downloads = ResultDownloader(
            self._http.resource,
            upstream=UPSTREAM,
            storage_name="Azure FLUX result storage",
            concurrency=4,
            policy=self._retry,
            timeout_s=timeout_s,
            headers_for=self._auth_for,
        )

    def url_for(self, upstream_id: str) -> str:
        return f"{self._endpoint}/providers/blackforestlabs/v1/{quote(upstream_id, safe='')}"

    def _auth_for(self, url: str) -> Mapping[str, str]:
        """Our key for the endpoint's own origin; nothing for any other host."""
        if same_origin(url, self._endpoint):
            return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        return {}

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """One FLUX generation or edit within `deadline`; only a failed
        submission is submitted again."""
        answer = await send_with_retry(
            self._http.resource,
            "POST",
            self.url_for(call.model.upstream_id),
            upstream=UPSTREAM,
            policy=self._retry,
            deadline=deadline,
            timeout_s=self._timeout_s,
            parse=parse_submission,
            json_body=request_body(call),
            params={"api-version": self._api_version},
            headers=self._auth_for(self._endpoint),
            classify=classify_content_filter,
        )
        if isinstance(answer, ImageLinks):
            images = await self._downloads.download_all(answer.urls, deadline)
            return UpstreamResult(images=images, filtered=answer.filtered)
        if isinstance(answer, PollingLink):
            sample = await self._poll(answer, deadline)
            return UpstreamResult(images=(await self._downloads.download(sample, deadline),))
        return answer

    async def _poll(self, link: PollingLink, deadline: Deadline) -> str:
        """Poll `link` until its task is Ready; the sample's URL."""
        if not is_http_url(link.url):
            raise malformed_link(link.task_id)
        pacing = PollPacing(self._poll_initial_s, self._poll_max_s)
        try:
            while True:
                if not await pacing.wait(deadline):
                    raise UpstreamTimeout(
                        "Azure FLUX had not finished the image when the deadline passed.",
                        metadata={"upstream": UPSTREAM.key},
                    )
                state = await send_with_retry(
                    self._http.resource,
                    "GET",
                    link.url,
                    upstream=UPSTREAM,
                    policy=self._retry,
                    deadline=deadline,
                    timeout_s=self._timeout_s,
                    parse=partial(parse_poll, task_id=link.task_id),
                    headers=self._auth_for(link.url),
                    classify=classify_content_filter,
                )
                if state.sample:
                    return state.sample
        except ImageServiceError as error:
            # What support needs to find the (possibly billed) task.
            if link.task_id:
                error.metadata.setdefault("task_id", link.task_id)
            raise

    async def aclose(self) -> None:
        await self._http.aclose()
