"""`AzureFluxBackend`: the one HTTP client and the retried call."""

from __future__ import annotations

from urllib.parse import quote

import httpx
from pydantic import SecretStr

from server.domain.deadline import Deadline
from server.domain.ports import UpstreamCall, UpstreamResult
from server.domain.retry import RetryPolicy
from server.providers._shared.http import owned_client, send_with_retry
from server.providers.azure_flux.errors import UPSTREAM, classify_content_filter
from server.providers.azure_flux.request import request_body
from server.providers.azure_flux.response import parse_response


class AzureFluxBackend:
    """`ImageBackend` for the FLUX models on one Azure AI Foundry resource."""

    def __init__(
        self,
        *,
        endpoint: str,
        api_key: SecretStr,
        api_version: str = "preview",
        timeout_s: float = 180.0,
        retry: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`client` is used as given and not closed; otherwise one is made
        (over `transport`, if given) and closed by `aclose`."""
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError("the Azure FLUX endpoint must be an http(s) URL")
        self._endpoint = endpoint.rstrip("/")
        self._api_key = api_key
        self._api_version = api_version
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._http = owned_client(client, timeout_s=timeout_s, transport=transport)

    def url_for(self, upstream_id: str) -> str:
        return f"{self._endpoint}/providers/blackforestlabs/v1/{quote(upstream_id, safe='')}"

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """One FLUX generation or edit, retried within `deadline`."""
        return await send_with_retry(
            self._http.resource,
            "POST",
            self.url_for(call.model.upstream_id),
            upstream=UPSTREAM,
            policy=self._retry,
            deadline=deadline,
            timeout_s=self._timeout_s,
            parse=parse_response,
            json_body=request_body(call),
            params={"api-version": self._api_version},
            headers={"Authorization": f"Bearer {self._api_key.get_secret_value()}"},
            classify=classify_content_filter,
        )

    async def aclose(self) -> None:
        await self._http.aclose()
