"""`BedrockStabilityBackend`: one InvokeModel per attempt, off the event loop."""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from server.domain.deadline import Deadline
from server.domain.ports import UpstreamCall, UpstreamResult
from server.domain.retry import RetryPolicy
from server.providers._shared.upstream import attempt_within, unavailable
from server.providers.bedrock_stability import PLUGIN
from server.providers.bedrock_stability.client import given, new_client, new_executor
from server.providers.bedrock_stability.errors import (
    ENDPOINT_SETTING,
    REGION_SETTING,
    UPSTREAM,
    error_for_botocore_error,
    error_for_client_error,
    log_failure,
)
from server.providers.bedrock_stability.request import encoded_body
from server.providers.bedrock_stability.response import parse_response

if TYPE_CHECKING:
    from mypy_boto3_bedrock_runtime import BedrockRuntimeClient


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
            raise ValueError(f"{ENDPOINT_SETTING} must be an http(s) URL")
        key_id, secret = given(access_key_id), given(secret_access_key)
        if (key_id is None) != (secret is None):
            raise ValueError(
                f"{PLUGIN.env_var('access_key_id')} and {PLUGIN.env_var('secret_access_key')} "
                "must be set together (or neither, to use the standard credential chain)"
            )
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._client: BedrockRuntimeClient = new_client(
            region=region,
            endpoint_url=endpoint_url or None,
            access_key_id=key_id,
            secret_access_key=secret,
            timeout_s=timeout_s,
            max_connections=max_connections,
            session=session,
        )
        self._executor = new_executor(max_connections)
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

    async def _invoke_mapped(self, model_id: str, body: bytes) -> UpstreamResult:
        """One InvokeModel on the pool, botocore's exceptions mapped to domain errors."""
        loop = asyncio.get_running_loop()
        detail = ""
        try:
            # The caller's context goes along (the trace, the retry scope).
            return await loop.run_in_executor(
                self._executor, contextvars.copy_context().run, self._invoke, model_id, body
            )
        except ClientError as error:
            mapped = error_for_client_error(error)
            detail = str(error.response.get("Error", {}).get("Message", ""))
        except BotoCoreError as error:
            mapped = error_for_botocore_error(error)
        log_failure(mapped, model_id, detail)
        # Raised outside the except blocks so the botocore exception (which
        # quotes the upstream's message) is not attached as __context__.
        raise mapped

    async def _attempt(self, model_id: str, body: bytes, deadline: Deadline) -> UpstreamResult:
        if self._closed:
            raise unavailable(UPSTREAM, "The Bedrock backend is shut down.")
        return await attempt_within(
            deadline, self._timeout_s, UPSTREAM, lambda _: self._invoke_mapped(model_id, body)
        )

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """One Stability generation or edit, retried within `deadline`."""
        if call.images:
            # Base64 of a multi-megapixel input is worth keeping off the loop.
            body = await asyncio.to_thread(encoded_body, call)
        else:
            body = encoded_body(call)
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
