"""Each real backend, built against the sandbox's emulator with `FAST_RETRY`.

The per-backend tests and the contract suite (`test_backend_contract.py`)
build their backends here, so a constructor change is made once.
"""

from __future__ import annotations

from typing import Any

import boto3
from pydantic import SecretStr

from server.providers.azure_flux.backend import AzureFluxBackend
from server.providers.azure_mai.backend import AzureMaiBackend
from server.providers.bailian_wan.backend import BailianWanBackend
from server.providers.bedrock_stability.backend import BedrockStabilityBackend
from server.providers.vertex_imagen.backend import VertexImagenBackend
from server.sandbox.azure_flux import SANDBOX_AZURE_FLUX_KEY
from server.sandbox.azure_mai import SANDBOX_AZURE_MAI_KEY
from server.sandbox.bailian_wan import SANDBOX_DASHSCOPE_KEY
from server.sandbox.bedrock_stability import (
    SANDBOX_BEDROCK_ACCESS_KEY_ID,
    SANDBOX_BEDROCK_REGION,
    SANDBOX_BEDROCK_SECRET_ACCESS_KEY,
)
from server.sandbox.server import SandboxServer
from tests.providers.conftest import FAST_RETRY

TIMEOUT_S = 10.0
# Wan (and FLUX, when answered with a polling link) poll a task; in tests
# every 10 to 50 ms.
POLL_INITIAL_S, POLL_MAX_S = 0.01, 0.05
# One session for every Bedrock backend: it caches the service model botocore loads.
BEDROCK_SESSION = boto3.session.Session()


def azure_flux(
    sandbox: SandboxServer, *, key: str = SANDBOX_AZURE_FLUX_KEY, timeout_s: float = TIMEOUT_S
) -> AzureFluxBackend:
    return AzureFluxBackend(
        endpoint=sandbox.base_url,
        api_key=SecretStr(key),
        api_version="preview",
        timeout_s=timeout_s,
        poll_initial_s=POLL_INITIAL_S,
        poll_max_s=POLL_MAX_S,
        retry=FAST_RETRY,
    )


def azure_mai(
    sandbox: SandboxServer,
    *,
    key: str = SANDBOX_AZURE_MAI_KEY,
    endpoint: str | None = None,
    deployment: str = "",
    api_version: str = "",
    timeout_s: float = TIMEOUT_S,
) -> AzureMaiBackend:
    return AzureMaiBackend(
        endpoint=sandbox.base_url if endpoint is None else endpoint,
        api_key=SecretStr(key),
        deployment=deployment,
        api_version=api_version,
        timeout_s=timeout_s,
        retry=FAST_RETRY,
    )


def bailian_wan(
    sandbox: SandboxServer,
    *,
    key: str = SANDBOX_DASHSCOPE_KEY,
    timeout_s: float = TIMEOUT_S,
    poll_initial_s: float = POLL_INITIAL_S,
    poll_max_s: float = POLL_MAX_S,
) -> BailianWanBackend:
    settings = sandbox.bailian_wan.settings_overrides(sandbox.base_url)
    return BailianWanBackend(
        base_url=settings["bailian_base_url"],
        api_key=SecretStr(key),
        timeout_s=timeout_s,
        poll_initial_s=poll_initial_s,
        poll_max_s=poll_max_s,
        retry=FAST_RETRY,
    )


def bedrock_stability(
    sandbox: SandboxServer,
    *,
    key_id: str | None = SANDBOX_BEDROCK_ACCESS_KEY_ID,
    secret: str | None = SANDBOX_BEDROCK_SECRET_ACCESS_KEY,
    timeout_s: float = TIMEOUT_S,
    max_connections: int = 8,
    session: Any = BEDROCK_SESSION,
) -> BedrockStabilityBackend:
    return BedrockStabilityBackend(
        region=SANDBOX_BEDROCK_REGION,
        endpoint_url=sandbox.base_url,
        access_key_id=SecretStr(key_id) if key_id is not None else None,
        secret_access_key=SecretStr(secret) if secret is not None else None,
        timeout_s=timeout_s,
        max_connections=max_connections,
        retry=FAST_RETRY,
        session=session,
    )


def vertex_imagen(
    sandbox: SandboxServer, *, project: str | None = None, timeout_s: float = TIMEOUT_S
) -> VertexImagenBackend:
    settings = sandbox.vertex_imagen.settings_overrides(sandbox.base_url)
    return VertexImagenBackend(
        project=settings["vertex_project"] if project is None else project,
        location=settings["vertex_location"],
        api_endpoint=settings["vertex_api_endpoint"],
        timeout_s=timeout_s,
        retry=FAST_RETRY,
    )
