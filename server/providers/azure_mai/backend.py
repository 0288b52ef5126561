"""`AzureMaiBackend`: the one HTTP client and the retried call."""

from __future__ import annotations

import httpx
from pydantic import SecretStr

from server.domain.deadline import Deadline
from server.domain.ports import UpstreamCall, UpstreamResult
from server.domain.requests import Operation
from server.domain.retry import RetryPolicy
from server.providers._shared.http import owned_client, send_with_retry
from server.providers.azure_mai.errors import UPSTREAM, classify
from server.providers.azure_mai.request import EDIT_ROUTE, ROUTE, edit_form, request_body
from server.providers.azure_mai.response import parse_response


class AzureMaiBackend:
    """`ImageBackend` for the MAI models of one Azure AI Foundry resource."""

    def __init__(
        self,
        *,
        endpoint: str,
        api_key: SecretStr,
        deployment: str = "",
        api_version: str = "",
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`deployment` overrides the catalogue's `upstream_id` as the body's
        `model`; `api_version`, when set, is sent as `?api-version=` (the
        documented route takes none). `client` is used as given and not
        closed; otherwise one is made (over `transport`, if given) and closed
        by `aclose`."""
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError("the Azure MAI endpoint must be an http(s) URL")
        self._url = endpoint.rstrip("/") + ROUTE
        self._edit_url = endpoint.rstrip("/") + EDIT_ROUTE
        self._api_key = api_key
        self._deployment = deployment.strip()
        self._params = {"api-version": api_version} if api_version else None
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._http = owned_client(client, timeout_s=timeout_s, transport=transport)

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """One MAI generation or prompt edit (one image), retried within `deadline`."""
        if call.operation is Operation.PROMPT_EDIT:
            form, content_type = edit_form(call, self._deployment)
            return await send_with_retry(
                self._http.resource,
                "POST",
                self._edit_url,
                upstream=UPSTREAM,
                policy=self._retry,
                deadline=deadline,
                timeout_s=self._timeout_s,
                parse=parse_response,
                body=form,
                params=self._params,
                headers={
                    "api-key": self._api_key.get_secret_value(),
                    "Content-Type": content_type,
                },
                classify=classify,
            )
        return await send_with_retry(
            self._http.resource,
            "POST",
            self._url,
            upstream=UPSTREAM,
            policy=self._retry,
            deadline=deadline,
            timeout_s=self._timeout_s,
            parse=parse_response,
            json_body=request_body(call, self._deployment),
            params=self._params,
            headers={"api-key": self._api_key.get_secret_value()},
            classify=classify,
        )

    async def aclose(self) -> None:
        await self._http.aclose()
