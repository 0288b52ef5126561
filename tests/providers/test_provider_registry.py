"""The backend registry builds what is configured and names what is missing."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest
from pydantic import SecretStr

from server.domain.catalogue import Catalogue
from server.providers.azure_flux.backend import AzureFluxBackend
from server.providers.registry import (
    PLUGINS,
    build_backends,
    check_catalogue,
    load_plugin,
    retry_policy,
)
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
        plugin = load_plugin(key)
        field = variable.removeprefix(plugin.env_prefix).lower()
        assert variable.startswith(plugin.env_prefix), (key, variable)
        assert field in plugin.settings.model_fields, (key, variable)
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


async def test_backend_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_SERVICE_AZURE_FLUX_ENDPOINT", "https://res.services.ai.azure.com")
    monkeypatch.setenv("IMAGE_SERVICE_AZURE_FLUX_API_KEY", "k")
    backends, missing = build_backends(Settings(), ["azure_flux"])
    try:
        assert isinstance(backends["azure_flux"], AzureFluxBackend)
        assert "azure_flux" not in missing
    finally:
        for backend in backends.values():
            await backend.aclose()


def test_a_misspelt_backend_value_fails_start_up() -> None:
    # Before plugins, a typo here silently meant "no limit".
    with pytest.raises(ValueError, match="IMAGE_SERVICE_AZURE_FLUX_MAX_CONCURENCY"):
        build_backends(settings(azure_flux_max_concurency=2))
    with pytest.raises(ValueError, match="IMAGE_SERVICE_AZURE_FLUXX_ENDPOINT"):
        build_backends(settings(azure_fluxx_endpoint="https://res.test"))


def test_plugins_import_no_sdk_until_built() -> None:
    # The plugin modules are what the registry imports for every backend;
    # the SDKs (and each backend's own modules) wait for the factory.
    code = (
        "import sys\n"
        "from server.providers.registry import PLUGINS, load_plugin\n"
        "for key in PLUGINS: load_plugin(key)\n"
        "heavy = [m for m in ('boto3', 'botocore', 'google.cloud.aiplatform_v1', 'httpx')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_every_catalogue_entry_has_valid_options() -> None:
    check_catalogue(Catalogue.load())


def test_bad_catalogue_options_fail_start_up() -> None:
    text = """
[[model]]
name = "azure/flux-x"
provider = "azure"
backend = "azure_flux"
upstream_id = "flux-x"
max_size = "1024x1024"
sizes = ["1024x1024"]
images_per_call = 1
operations = ["generate"]
price_per_image = "0.05"
options = { size_mode = "ratio" }
"""
    with pytest.raises(ValueError, match=r"azure/flux-x.*size_mode"):
        check_catalogue(Catalogue.load(text))
    with pytest.raises(ValueError, match=r"azure/flux-x.*colour"):
        check_catalogue(Catalogue.load(text.replace('size_mode = "ratio"', 'colour = "red"')))


def test_registry_sandbox_and_contract_suite_name_the_same_backends() -> None:
    from server.sandbox.server import SandboxServer
    from tests.providers.test_backend_contract import HARNESSES

    emulators = {emulator.name for emulator in SandboxServer().emulators}
    harnesses = {harness.name for harness in HARNESSES}
    catalogue = {model.backend for model in Catalogue.load()}
    assert set(PLUGINS) == emulators == harnesses == catalogue
    for key in PLUGINS:
        assert load_plugin(key).key == key


@pytest.mark.parametrize("key", sorted(PLUGINS))
def test_every_setting_of_a_plugin_reaches_its_backend(key: str) -> None:
    # The plugin builds its backend with every settings field as a keyword
    # argument: a field the constructor does not take would fail start-up.
    plugin = load_plugin(key)
    module_name, _, attribute = plugin.backend.partition(":")
    backend_class = getattr(importlib.import_module(module_name), attribute)
    parameters = inspect.signature(backend_class).parameters
    assert set(plugin.settings.model_fields) | {"retry"} <= set(parameters), key
