"""The backend registry builds what is configured and names what is missing."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from server.domain.catalogue import Catalogue
from server.providers.azure_flux import AzureFluxBackend
from server.providers.registry import build_backends, retry_policy
from server.settings import Settings


def settings(**overrides: object) -> Settings:
    # Explicit values, so the test does not depend on the environment.
    base: dict[str, object] = {"azure_flux_endpoint": "", "azure_flux_api_key": None}
    return Settings.model_validate({**base, **overrides})


async def test_unconfigured_backends_are_reported_not_built() -> None:
    catalogue_backends = {model.backend for model in Catalogue.load()}

    backends, missing = build_backends(settings(), catalogue_backends)

    assert backends == {}
    assert missing["azure_flux"] == "IMAGE_SERVICE_AZURE_FLUX_ENDPOINT"
    assert set(missing) == catalogue_backends
    for key, variable in missing.items():
        # Every backend names a real setting a deployer can set.
        field = variable.removeprefix("IMAGE_SERVICE_").lower()
        assert field in Settings.model_fields, (key, variable)
    # A catalogue backend without an implementation is "not configured", not a crash.
    _, unknown = build_backends(settings(), ["acme_backend"])
    assert unknown["acme_backend"] == ""


async def test_missing_key_is_named() -> None:
    _, missing = build_backends(settings(azure_flux_endpoint="https://res.services.ai.azure.com"))
    assert missing["azure_flux"] == "IMAGE_SERVICE_AZURE_FLUX_API_KEY"
    _, empty = build_backends(
        settings(azure_flux_endpoint="https://res.test", azure_flux_api_key=SecretStr(""))
    )
    assert empty["azure_flux"] == "IMAGE_SERVICE_AZURE_FLUX_API_KEY"


async def test_configured_backend_is_built() -> None:
    configured = settings(
        azure_flux_endpoint="https://res.services.ai.azure.com", azure_flux_api_key="k"
    )
    backends, missing = build_backends(configured, ["azure_flux"])
    try:
        assert isinstance(backends["azure_flux"], AzureFluxBackend)
        assert "azure_flux" not in missing
    finally:
        for backend in backends.values():
            await backend.aclose()


async def test_malformed_endpoint_fails_loudly() -> None:
    with pytest.raises(ValueError):
        build_backends(settings(azure_flux_endpoint="res.azure.com", azure_flux_api_key="k"))


def test_retry_policy_follows_settings() -> None:
    policy = retry_policy(
        settings(upstream_attempts=2, upstream_backoff_base_s=0.1, upstream_backoff_max_s=1)
    )
    assert (policy.attempts, policy.base_delay, policy.max_delay) == (2, 0.1, 1)
