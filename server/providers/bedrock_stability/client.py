"""The boto3 `bedrock-runtime` client and the thread pool its calls run on.

boto3 is synchronous: each call runs on the backend's own thread pool, as
large as botocore's connection pool, so a burst queues for a thread instead
of piling onto the event loop or overrunning the pool. botocore's retries are
off (one `RetryPolicy` governs every backend).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from pydantic import SecretStr

from server.providers._shared.upstream import CONNECT_TIMEOUT_S, USER_AGENT

if TYPE_CHECKING:
    from mypy_boto3_bedrock_runtime import BedrockRuntimeClient


def given(secret: SecretStr | None) -> str | None:
    """The secret's value, or None when unset or empty (an empty variable)."""
    value = secret.get_secret_value() if secret is not None else ""
    return value or None


def new_client(
    *,
    region: str,
    endpoint_url: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    timeout_s: float,
    max_connections: int,
    session: boto3.session.Session | None,
) -> BedrockRuntimeClient:
    """A `bedrock-runtime` client configured as `BedrockStabilityBackend` documents.

    With no keys given (None), botocore resolves credentials through its
    standard chain, lazily, on the first call (so on a pool thread, never on
    the loop).
    """
    auth: dict[str, Any] = {}
    if access_key_id is not None:
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
    # clients from it is not thread-safe.
    session = session or boto3.session.Session()
    return session.client(
        "bedrock-runtime",
        region_name=region,
        endpoint_url=endpoint_url or None,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


def new_executor(max_connections: int) -> ThreadPoolExecutor:
    """The pool the blocking calls run on: one thread per pooled connection."""
    return ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="bedrock-stability")
